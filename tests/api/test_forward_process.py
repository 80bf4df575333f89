"""`WorkerPool.forward_process`: the diffusion explorer's forward process runs on the device's
worker — a thread, or the worker process — never in the caller's thread, and comes back as
plain data. With the fake engine: where it runs, what it is given, its errors and its timeout.
With the real built-in model on the CPU, in both worker modes: the images and numbers, equal to
the engine's own, and (process mode) no pipeline loaded in the web process."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageChops, ImageStat

from stable_diffusion_api.config import Settings
from stable_diffusion_api.errors import DomainError
from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.services.generator import ForwardResult
from stable_diffusion_api.services.studio import Studio
from stable_diffusion_api.services.worker_context import ForwardFailed
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def picture(width: int = 320, height: int = 200) -> Image.Image:
    """A red-to-blue gradient with a white square: something to recognise through noise."""
    image = Image.linear_gradient("L").resize((width, height))
    red = image
    blue = ImageChops.invert(image)
    merged = Image.merge("RGB", (red, Image.new("L", (width, height), 40), blue))
    merged.paste((255, 255, 255), (width // 3, height // 3, width // 2, height // 2))
    return merged


def studio_of(client: TestClient) -> Studio:
    return client.app.state.studio  # type: ignore[attr-defined,no-any-return]


def test_it_runs_on_the_devices_worker_thread_with_the_resolved_model(
    client: TestClient, fake: FakeGenerator
) -> None:
    pool = studio_of(client).workers
    result = pool.forward_process("", "cpu", None, picture(), [0, 500, 999], 7, timeout=10)
    assert [step.t for step in result.steps] == [0, 500, 999]
    assert result.clean.size == (320, 200) and result.steps[1].image.size == (320, 200)
    (spec, thread), = fake.forwards  # fmt: skip
    assert thread == "dali-worker-cpu" != threading.current_thread().name
    assert (spec.model_name, spec.device, spec.dtype, spec.timesteps, spec.seed) == (
        "dali-tiny", "cpu", None, (0, 500, 999), 7,
    )  # fmt: skip
    assert spec.checkpoint == fake.builtin.absolute() or spec.checkpoint == fake.builtin
    pool.forward_process("dali-tiny", "cuda:0", "bfloat16", picture(), [10], 1, timeout=10)
    spec, thread = fake.forwards[-1]
    assert (spec.device, spec.dtype, thread) == ("cuda:0", "bfloat16", "dali-worker-cuda:0")


def test_refused_inputs_and_failures_come_back_as_exceptions(
    client: TestClient, fake: FakeGenerator
) -> None:
    pool = studio_of(client).workers
    with pytest.raises(ValueError, match="t must be from 0 to 999, got 1000"):
        pool.forward_process("", "cpu", None, picture(), [1000], 0, timeout=10)
    with pytest.raises(DomainError):  # checked before anything is sent
        pool.forward_process("", "tpu:0", None, picture(), [1], 0, timeout=10)
    with pytest.raises(DomainError):
        pool.forward_process("no-such-model", "cpu", None, picture(), [1], 0, timeout=10)
    fake.fail_with = RuntimeError("CUDA out of memory. Tried to allocate 9 GiB")
    with pytest.raises(ForwardFailed, match="out of memory") as failed:
        pool.forward_process("", "cpu", None, picture(), [1], 0, timeout=10)
    assert failed.value.kind is FailureKind.OUT_OF_MEMORY
    fake.fail_with = None
    assert pool.forward_process("", "cpu", None, picture(), [1], 0, timeout=10).steps


def test_it_waits_for_the_running_job_and_a_timed_out_task_is_dropped(
    client: TestClient, fake: FakeGenerator
) -> None:
    pool = studio_of(client).workers
    fake.block_at = 2
    job = submit(client, make_project(client)["id"])
    assert fake.reached.wait(10)
    with pytest.raises(TimeoutError, match="did not run the forward process within 0.2 s"):
        pool.forward_process("", "cpu", None, picture(), [1], 0, timeout=0.2)
    fake.release.set()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    result = pool.forward_process("", "cpu", None, picture(), [3], 0, timeout=10)
    assert [step.t for step in result.steps] == [3]
    assert [spec.timesteps for spec, _ in fake.forwards] == [(3,)]  # the dropped one never ran


# -- the real engine, both worker modes --------------------------------------------------------


@pytest.fixture(scope="module")
def engine_reference() -> ForwardResult:
    """The engine's own forward process, in this process (what the workers must give back)."""
    from stable_diffusion_api.services.engine import SdCoreGenerator
    from stable_diffusion_api.services.generator import ForwardSpec

    engine = SdCoreGenerator(2**30)
    spec = ForwardSpec(engine.builtin_checkpoint(), "dali-tiny", "cpu", None, picture(),
                       (0, 250, 999), seed=7)  # fmt: skip
    return engine.forward_process(spec)


@pytest.fixture(params=["thread", "process"])
def real_studio(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Studio]:
    settings = Settings(data_dir=tmp_path / "data", poll_s=0.05, worker_mode=request.param)
    studio = Studio(settings)
    studio.start()
    try:
        yield studio
    finally:
        studio.stop()


def test_the_real_model_noises_and_decodes_on_the_worker_in_either_mode(
    real_studio: Studio, engine_reference: ForwardResult
) -> None:
    pool = real_studio.workers
    result = pool.forward_process("", "cpu", None, picture(), [0, 250, 999], 7, timeout=300)
    # Fitted to the model's native size or 256 a side, whichever is larger (dali-tiny: 64).
    assert result.clean.size == (256, 160)
    assert [step.image.size for step in result.steps] == [(256, 160)] * 3
    assert [step.t for step in result.steps] == [0, 250, 999]
    alpha_bars = [step.alpha_bar for step in result.steps]
    assert alpha_bars[0] == pytest.approx(0.99915, abs=1e-5) and alpha_bars[2] < 0.01
    for step in result.steps:
        assert step.snr == pytest.approx(step.alpha_bar / (1 - step.alpha_bar))
        assert step.snr_db == pytest.approx(10 * math.log10(step.snr))
        assert step.sigma == pytest.approx(math.sqrt(1 / step.snr))

    def distance(a: Image.Image, b: Image.Image) -> float:
        return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3

    assert distance(result.steps[0].image, result.clean) < 8  # t = 0: the image itself
    assert distance(result.steps[2].image, result.clean) > 30  # t = 999: noise
    # The same as the engine gives in this process (one seed, one noise draw).
    assert [s.alpha_bar for s in engine_reference.steps] == alpha_bars
    assert distance(result.clean, engine_reference.clean) < 1
    for mine, reference in zip(result.steps, engine_reference.steps, strict=True):
        assert distance(mine.image, reference.image) < 1
    engine = real_studio.generator
    if pool.mode == "process":  # the web process loaded no pipeline: the worker did
        assert engine.cache.used_bytes == 0  # type: ignore[attr-defined]
        worker = pool.workers["cpu"]
        assert worker.pid is not None and worker.pid != os.getpid()
    else:
        assert engine.cache.used_bytes > 0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="t must be from 0 to 999"):
        pool.forward_process("", "cpu", None, picture(), [1000], 7, timeout=300)
