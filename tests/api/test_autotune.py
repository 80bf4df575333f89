"""The hardware page's and the API's autotune: queued on the device's worker like a benchmark,
its figures shown per device, the chosen fast path applied by the engine to later loads."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from tests.api.fakes import FakeGenerator


def wait_done(client: TestClient) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 10
    while True:
        runs = [b for b in client.get("/api/v1/hardware/benchmarks").json()
                if b["kind"] == "autotune"]  # fmt: skip
        if runs and runs[0]["status"] in ("done", "failed"):
            return runs[0]  # type: ignore[no-any-return]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_autotune_runs_on_the_worker_and_its_figures_are_served(
    client: TestClient, fake: FakeGenerator, settings: Settings
) -> None:
    fake.autotune_file = settings.autotune_file
    assert client.get("/api/v1/hardware/autotune").json() == []
    queued = client.post("/api/v1/hardware/autotune", json={"device": "cpu", "steps": 3})
    assert queued.status_code == 202 and queued.json()["kind"] == "autotune"
    done = wait_done(client)
    assert done["status"] == "done" and done["result"]["chosen"]["float32"]["mode"] == "compile"
    ((model, steps),) = fake.autotunes
    assert model.device == "cpu" and steps == 3
    (tuned,) = client.get("/api/v1/hardware/autotune").json()
    assert tuned["device"] == "cpu" and tuned["device_name"] == "Fake CPU"
    assert tuned["chosen"] == {"float32": "compile + fused QKV, float32"}
    broken = next(r for r in tuned["results"] if r["status"] == "outside tolerance")
    assert broken["seconds"] == 0.1 and broken["error"] == 9.5  # the fastest, refused
    assert "cuda_graphs" in tuned["skipped"]

    page = client.get("/hardware").text
    assert "Autotune" in page and 'formaction="/hardware/autotune"' in page
    assert "chosen for float32" in page and "compile + fused QKV, float32" in page
    assert "outside tolerance" in page and "CUDA graphs need a CUDA device" in page


def test_the_autotune_form_queues_one_and_bad_input_is_refused(
    client: TestClient, fake: FakeGenerator
) -> None:
    posted = client.post("/hardware/autotune", data={"device": "cpu"}, follow_redirects=False)
    assert posted.status_code == 303
    assert wait_done(client)["status"] == "done" and fake.autotunes[-1][1] == 4
    refused = client.post("/api/v1/hardware/autotune", json={"device": "cuda:7"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "device"]
    steps = client.post("/api/v1/hardware/autotune", json={"steps": 500})
    assert steps.status_code == 422 and "steps" in str(steps.json())


def test_a_failed_autotune_says_why(client: TestClient, fake: FakeGenerator) -> None:
    fake.fail_with = RuntimeError("no room on the device")
    client.post("/api/v1/hardware/autotune", json={"device": "cpu"})
    failed = wait_done(client)
    assert failed["status"] == "failed" and "no room on the device" in failed["error"]


def test_the_engine_keeps_the_choice_and_applies_it_when_it_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sd_core import autotune as autotune_module
    from sd_core.checkpoint import save_checkpoint
    from sd_core.config import TINY_TEST
    from sd_core.fast_path import FastPath
    from stable_diffusion_api.services.engine import SdCoreGenerator
    from stable_diffusion_api.services.generator import ModelSpec
    from tests.reference import random_checkpoint

    path = save_checkpoint(tmp_path / "tiny.safetensors", random_checkpoint(TINY_TEST, 1),
                           TINY_TEST)  # fmt: skip
    fused = FastPath("eager", "float32", fused_qkv=True)
    # Only the cheap candidates (compile takes a minute on this machine: its own slow test).
    monkeypatch.setattr(autotune_module, "candidates", lambda device, dtypes: [fused])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "kernels"))  # not the data dir
    file = tmp_path / "data" / "autotune.json"
    engine = SdCoreGenerator(2**30, fast_path_file=file)
    model = ModelSpec(path, "tiny", "cpu", None)
    result = engine.autotune(model, steps=2)
    assert result["chosen"] == {"float32": fused.as_json()} and file.exists()
    pipe = engine._pipeline(model)
    assert pipe.fast_path == fused
    assert any(m.fused_qkv is not None for m in pipe.unet.modules() if hasattr(m, "fused_qkv"))
    # Another dtype was never tuned: loaded as it is.
    assert engine._pipeline(ModelSpec(path, "tiny", "cpu", "bfloat16")).fast_path is None
