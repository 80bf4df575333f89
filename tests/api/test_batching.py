"""Batching across queued jobs (DALI_BATCH_MAX), through the service with the real engine in
a thread worker on a SQLite file: matching queued jobs are claimed together and run in one
denoising loop, each image equal to its job run alone, and one job's cancel in the middle
leaves the others succeeded."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sd_core.result import GenerationResult
from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.engine import SdCoreGenerator
from stable_diffusion_api.services.generator import BatchEntry, JobSpec, StepCallback
from tests.api.helpers import make_project, submit, wait_for

HOLD = "a white circle on a black background"  # the job that keeps the worker busy
JOBS: list[dict[str, Any]] = [
    {"prompt": "a red circle on a blue background", "seed": 5, "guidance": 7.5},
    {"prompt": "a small green square on a white background", "seed": 99, "guidance": 4.0,
     "batch": 2, "negative_prompt": "blue"},
    {"prompt": "a yellow triangle on a gray background", "seed": 1234, "guidance": 12.0},
    {"prompt": "a purple circle on a black background", "seed": 7, "guidance": 1.0},
]  # fmt: skip
COMMON = {"steps": 3, "sampler": "Euler a", "width": 64, "height": 64}


class RecordingEngine(SdCoreGenerator):
    """The real engine, holding the HOLD job until `release` is set, keeping the prompts of
    each batch it runs and the steps each of its jobs reported, and pausing the job whose prompt is `pause_prompt` after its first
    step until `resume` is set (`paused` tells it got there)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.pipeline_cache_bytes, 1, settings.asset_folders)
        self.held, self.release = threading.Event(), threading.Event()
        self.paused, self.resume = threading.Event(), threading.Event()
        self.pause_prompt: str | None = None
        self.batches: list[list[str]] = []
        self.steps: dict[str, list[int]] = {}  # the progress each batched job reported

    def generate(self, job: JobSpec, on_step: StepCallback, *args: Any, **kwargs: Any) -> Any:
        if job.params.prompt == HOLD:
            self.held.set()
            assert self.release.wait(60)
        return super().generate(job, on_step, *args, **kwargs)

    def generate_batch(self, entries: Sequence[BatchEntry]) -> list[GenerationResult | Exception]:
        self.batches.append([entry.job.params.prompt for entry in entries])
        return super().generate_batch([self._pausing(entry) for entry in entries])

    def _pausing(self, entry: BatchEntry) -> BatchEntry:
        on_step, prompt = entry.on_step, entry.job.params.prompt
        self.steps[prompt] = []

        def counting_and_pausing(step: int, total: int, preview: Any) -> None:
            on_step(step, total, preview)
            self.steps[prompt].append(step)
            if step == 1 and prompt == self.pause_prompt:
                self.paused.set()
                assert self.resume.wait(60)

        return BatchEntry(entry.job, counting_and_pausing, entry.should_cancel,
                          entry.on_filmstrip, entry.should_interrupt)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[TestClient, RecordingEngine]]:
    settings = Settings(data_dir=tmp_path / "data", poll_s=0.05, batch_max=4,
                        filmstrip_frames=2, api_key=None, api_auth=None)  # fmt: skip
    engine = RecordingEngine(settings)
    with TestClient(create_app(settings, engine)) as client:
        yield client, engine
    engine.release.set()
    engine.resume.set()


def pixels(client: TestClient, job: dict[str, Any]) -> list[np.ndarray]:
    pictures = [client.get(image["url"]).content for image in job["images"]]
    return [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pictures]


def queue_behind_a_held_job(
    client: TestClient, engine: RecordingEngine, project: int, jobs: list[dict[str, Any]]
) -> list[int]:
    """Submit the HOLD job, wait until the worker runs it, queue `jobs`, let it go."""
    held = submit(client, project, prompt=HOLD, **COMMON)
    assert engine.held.wait(60)
    ids = [submit(client, project, **COMMON, **job)["id"] for job in jobs]
    engine.release.set()
    wait_for(client, held["id"], timeout=60)
    return ids


def test_matching_queued_jobs_run_together_and_equal_the_jobs_run_alone(
    served: tuple[TestClient, RecordingEngine],
) -> None:
    client, engine = served
    project = make_project(client, "Batched")["id"]
    ids = queue_behind_a_held_job(client, engine, project, JOBS)
    together = [wait_for(client, job_id, timeout=60) for job_id in ids]
    assert engine.batches == [[job["prompt"] for job in JOBS]]  # one loop for the four
    assert all(engine.steps[job["prompt"]] == [1, 2, 3] for job in JOBS)  # progress per job
    assert [len(job["images"]) for job in together] == [1, 2, 1, 1]
    assert all(job["filmstrip"] is not None for job in together)  # each its own
    alone = []
    for job in JOBS:  # one at a time: each is the only job waiting when it is claimed
        alone.append(wait_for(client, submit(client, project, **COMMON, **job)["id"], timeout=60))
    assert engine.batches == [[job["prompt"] for job in JOBS]]  # no batch of one
    for batched, single in zip(together, alone, strict=True):
        assert [i["seed"] for i in batched["images"]] == [i["seed"] for i in single["images"]]
        for a, b in zip(pixels(client, batched), pixels(client, single), strict=True):
            assert np.array_equal(a, b), batched["prompt"]


def test_a_job_canceled_in_the_middle_of_a_batch_leaves_the_others_succeeded(
    served: tuple[TestClient, RecordingEngine],
) -> None:
    client, engine = served
    project = make_project(client, "Cancel one")["id"]
    engine.pause_prompt = JOBS[1]["prompt"]
    ids = queue_behind_a_held_job(client, engine, project, JOBS[:3])
    assert engine.paused.wait(60)  # the second job has made its first step
    canceled = client.post(f"/api/v1/generations/{ids[1]}/cancel")
    assert canceled.status_code == 200, canceled.text
    engine.resume.set()
    ended = [wait_for(client, job_id, ("succeeded", "canceled", "failed"), 60) for job_id in ids]
    assert [job["status"] for job in ended] == ["succeeded", "canceled", "succeeded"]
    assert ended[1]["images"] == [] and ended[1]["failure_kind"] == "cancelled"
    assert engine.batches == [[job["prompt"] for job in JOBS[:3]]]
    assert engine.steps[JOBS[1]["prompt"]] == [1]  # it stopped there, the others went on
    assert engine.steps[JOBS[0]["prompt"]] == engine.steps[JOBS[2]["prompt"]] == [1, 2, 3]
    assert all(len(job["images"]) == 1 for job in (ended[0], ended[2]))


def test_a_worker_process_claims_and_runs_a_batch(tmp_path: Path) -> None:
    """The default worker mode: the child process's worker batches as the thread does."""
    settings = Settings(data_dir=tmp_path / "data", poll_s=0.05, batch_max=4, torch_threads=1,
                        worker_mode="process", api_key=None, api_auth=None)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        project = make_project(client, "In a process")["id"]
        # Its other step count keeps it alone; the three wait behind it (loading the model, 20 steps).
        first = submit(client, project, **{**COMMON, "steps": 20})["id"]
        ids = [submit(client, project, **COMMON, **job)["id"] for job in JOBS[:3]]
        ended = [wait_for(client, job_id, timeout=120) for job_id in (first, *ids)]
    assert [len(job["images"]) for job in ended] == [1, 1, 2, 1]
    # Claimed in one statement: one start time for the three, after the first's.
    assert len({job["started_at"] for job in ended[1:]}) == 1
    assert ended[1]["started_at"] > ended[0]["started_at"]
