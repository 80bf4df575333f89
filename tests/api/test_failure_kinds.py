"""Every way a job can end unsuccessfully records its `FailureKind`: invalid input, internal
error, out of memory (torch's OutOfMemoryError or a RuntimeError saying so), cancel (queued and
running), interruption (a stop mid-job, a crash found at start-up). And the A1111 API answers
from the kind, not from the message's wording."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.a1111.service import GenerationFailed
from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.run_failures import failure_of, is_out_of_memory
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for
from tests.api.test_recovery import add_job

ENDED = ("failed", "canceled", "succeeded")


def kind_of(client: TestClient, generation_id: int) -> FailureKind | None:
    """The kind the REST API shows for the generation."""
    kind = client.get(f"/api/v1/generations/{generation_id}").json()["failure_kind"]
    return None if kind is None else FailureKind(kind)


def torch_out_of_memory() -> Exception:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize(
    ("raised", "kind", "error"),
    [
        (ValueError("width must be a multiple of 8"), FailureKind.INVALID_INPUT,
         "width must be a multiple of 8"),
        (RuntimeError("boom"), FailureKind.INTERNAL, "internal error: RuntimeError: boom"),
        (RuntimeError("MPS backend out of memory (MPS allocated: 17 GB)"),
         FailureKind.OUT_OF_MEMORY,
         "internal error: RuntimeError: MPS backend out of memory (MPS allocated: 17 GB)"),
        (None, FailureKind.OUT_OF_MEMORY,
         "internal error: OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)  # fmt: skip
def test_an_engine_failure_records_its_kind(
    client: TestClient,
    fake: FakeGenerator,
    raised: Exception | None,
    kind: FailureKind,
    error: str,
) -> None:
    fake.fail_with = raised if raised is not None else torch_out_of_memory()
    project = make_project(client)
    failed = wait_for(client, submit(client, project["id"])["id"], ENDED)
    assert (failed["status"], failed["error"]) == ("failed", error)
    assert kind_of(client, failed["id"]) is kind
    fake.fail_with = None  # the worker carries on
    done = wait_for(client, submit(client, project["id"])["id"], ENDED)
    assert done["status"] == "succeeded" and kind_of(client, done["id"]) is None


def test_out_of_memory_is_told_by_the_exception_not_by_importing_torch() -> None:
    class OutOfMemoryError(RuntimeError):  # what torch.OutOfMemoryError is called
        pass

    assert is_out_of_memory(OutOfMemoryError("anything"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))  # refused input, stays invalid
    assert failure_of(ValueError("out of memory"))[0] is FailureKind.INVALID_INPUT


def test_canceling_a_queued_or_a_running_job_records_cancelled(
    client: TestClient, fake: FakeGenerator
) -> None:
    fake.block_at = 2
    project = make_project(client)
    running = submit(client, project["id"], prompt="running")
    queued = submit(client, project["id"], prompt="queued")
    assert fake.reached.wait(10)
    assert client.post(f"/api/v1/generations/{queued['id']}/cancel").status_code == 200
    assert client.post(f"/api/v1/generations/{running['id']}/cancel").status_code == 200
    fake.release.set()
    for job, error in ((queued, "canceled before it started"), (running, "canceled while running")):
        ended = wait_for(client, job["id"], ENDED)
        assert (ended["status"], ended["error"]) == ("canceled", error)
        assert kind_of(client, job["id"]) is FailureKind.CANCELLED


def test_a_stop_mid_job_and_a_crash_found_at_start_up_record_interrupted(
    settings: Settings, fake: FakeGenerator
) -> None:
    fake.step_delay = 0.05
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        stopped = submit(client, project["id"], steps=150)
        wait_for(client, stopped["id"], ("running",))
    fake.step_delay = 0
    db = Database(settings.resolved_database_url)
    crashed = add_job(db, project["id"], "running", "dead-host-1-abc", "was running")
    db.dispose()
    with TestClient(create_app(settings, fake)) as client:
        for job_id in (stopped["id"], crashed):
            ended = client.get(f"/api/v1/generations/{job_id}").json()
            assert ended["status"] == "failed" and ended["error"].startswith("interrupted")
            assert kind_of(client, job_id) is FailureKind.INTERRUPTED


def test_a1111_answers_from_the_kind_not_the_wording() -> None:
    # Messages that would have fooled the old prefix matching.
    assert GenerationFailed("interrupted by nothing", FailureKind.INVALID_INPUT).status_code == 422
    assert GenerationFailed("bad width", FailureKind.INVALID_INPUT).status_code == 422
    assert GenerationFailed("x", FailureKind.INTERRUPTED).status_code == 503
    assert GenerationFailed("x", FailureKind.INTERNAL).status_code == 500
    assert GenerationFailed("x", FailureKind.OUT_OF_MEMORY).status_code == 500
    assert GenerationFailed("internal error: x", None).status_code == 500


def test_the_rest_api_shows_the_failure_kind(client: TestClient, fake: FakeGenerator) -> None:
    fake.fail_with = ValueError("width must be a multiple of 8")
    failed = wait_for(client, submit(client, make_project(client)["id"])["id"], ENDED)
    assert failed["failure_kind"] == "invalid_input"
