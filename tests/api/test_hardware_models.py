"""Hardware listing and measured speed; the model registry; the sampler list."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.services.generator import CheckpointSpec
from stable_diffusion_api.services.registry import ModelRegistry
from tests.api.fakes import FakeGenerator, write_fake_checkpoint
from tests.api.helpers import make_project, submit, wait_for


def test_hardware_lists_every_device_with_its_dtypes(
    client: TestClient, settings: Settings
) -> None:
    devices = client.get("/api/v1/hardware").json()
    node = settings.resolved_node_name  # the single machine is a node too: node/device ids
    assert [d["id"] for d in devices] == [f"{node}/cpu", f"{node}/cuda:0"]
    assert [(d["node"], d["device"]) for d in devices] == [(node, "cpu"), (node, "cuda:0")]
    cpu, gpu = devices
    assert cpu["name"] == "Fake CPU" and cpu["cores"] == 2 and cpu["total_memory"] > 0
    assert cpu["dtypes"] == ["float32", "bfloat16"] and cpu["speeds"] == []
    assert gpu["compute_capability"] == "8.6" and "float16" in gpu["dtypes"]


def test_benchmark_measures_speed_and_estimates_use_it(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client, defaults={"width": 64, "height": 64, "steps": 20})
    url = f"/api/v1/projects/{project['id']}/estimate"
    before = client.get(url).json()
    assert before["seconds"] is None and "not measured" in before["basis"]

    fake.step_delay = 0.02
    queued = client.post("/api/v1/hardware/benchmark", json={"device": "cpu", "width": 64,
                                                            "height": 64, "steps": 6})  # fmt: skip
    assert queued.status_code == 202 and queued.json()["status"] in ("queued", "running", "done")
    deadline = time.monotonic() + 10
    while client.get("/api/v1/hardware/benchmarks").json()[0]["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    speed = client.get("/api/v1/hardware").json()[0]["speeds"][0]
    assert (speed["width"], speed["height"], speed["source"]) == (64, 64, "benchmark")
    assert 10 < speed["steps_per_s"] < 60  # one step takes ~20 ms
    assert fake.calls[-1].params.steps == 6

    exact = client.get(url).json()
    assert 20 / 60 < exact["seconds"] < 20 / 10 + 1 and "measured" in exact["basis"]
    doubled = client.get(url, params={"steps": 40, "batch": 2}).json()
    assert doubled["seconds"] > 3.5 * exact["seconds"] - 4 * speed["overhead_s"]
    scaled = client.get(url, params={"width": 128, "height": 128}).json()
    assert "scaled from" in scaled["basis"] and scaled["seconds"] > 3 * exact["seconds"]
    assert client.get(url, params={"device": "cuda:0"}).json()["seconds"] is None
    assert client.get(url, params={"device": "tpu"}).status_code == 422
    assert client.get(url, params={"width": 65}).status_code == 422

    refused = client.post("/api/v1/hardware/benchmark", json={"device": "cuda:7"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "device"]


def test_generations_keep_the_speed_measurement_current(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    fake.step_delay = 0.01
    wait_for(client, submit(client, project["id"], steps=5, width=96, height=64)["id"])
    # Recorded just after the job is announced finished (nobody waits for it): look a moment.
    deadline = time.monotonic() + 5
    while not (speeds := client.get("/api/v1/hardware").json()[0]["speeds"]):
        assert time.monotonic() < deadline, "no speed recorded"
        time.sleep(0.02)
    assert [(s["width"], s["height"], s["source"]) for s in speeds] == [(96, 64, "generation")]


def test_models_list_builtin_and_files_with_cached_hashes(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    models_dir = settings.resolved_models_dir
    # Counted from before the files appear: the node's heartbeat lists its models too (the
    # built-in was inspected when the node registered at start).
    calls = []
    original = fake.inspect_checkpoint
    fake.inspect_checkpoint = lambda path: calls.append(path) or original(path)  # type: ignore[method-assign]
    write_fake_checkpoint(models_dir / "v1-5-pruned-emaonly.safetensors", payload=b"x")
    write_fake_checkpoint(models_dir / "sub" / "inpaint.ckpt", "sd-v1-inpainting")
    (models_dir / "notes.txt").write_text("ignored")
    (models_dir / "broken.safetensors").write_bytes(b"garbage")

    models = {m["name"]: m for m in client.get("/api/v1/models").json()}
    assert list(models)[0] == "dali-tiny"
    assert set(models) == {"dali-tiny", "v1-5-pruned-emaonly", "inpaint", "broken"}
    tiny = models["dali-tiny"]
    assert tiny["builtin"] and tiny["available"] and "built-in: shapes only" in tiny["label"]
    full = models["v1-5-pruned-emaonly"]
    assert full["variant"] == "sd-v1" and len(full["sha256"]) == 64
    assert full["short_hash"] == full["sha256"][:10] and full["size_bytes"] > 0
    assert models["inpaint"]["variant"] == "sd-v1-inpainting"
    assert models["inpaint"]["filename"] == "sub/inpaint.ckpt"
    assert (
        not models["broken"]["available"] and "not a Stable Diffusion" in models["broken"]["error"]
    )

    assert sorted(path.name for path in calls) == [
        "broken.safetensors", "inpaint.ckpt", "v1-5-pruned-emaonly.safetensors"
    ]  # fmt: skip
    client.get("/api/v1/models")  # hashed once: unchanged files are not read again
    assert len(calls) == 3
    project = make_project(client)
    by_hash = submit(client, project["id"], model=full["short_hash"])
    assert wait_for(client, by_hash["id"])["model"] == "v1-5-pruned-emaonly"
    unusable = client.post(f"/api/v1/projects/{project['id']}/generations",
                           json={"prompt": "a", "model": "broken"})  # fmt: skip
    assert unusable.status_code == 422 and "cannot be used" in unusable.json()["detail"][0]["msg"]

    # The hashes survive a restart (kept in the database) until a file changes.
    from stable_diffusion_api.sd_api import create_app

    with TestClient(create_app(settings, fake)) as again:
        again.get("/api/v1/models")
        assert len(calls) == 3
        write_fake_checkpoint(models_dir / "v1-5-pruned-emaonly.safetensors", payload=b"changed!")
        changed = {m["name"]: m for m in again.get("/api/v1/models").json()}
        assert len(calls) == 4 and changed["v1-5-pruned-emaonly"]["sha256"] != full["sha256"]


def test_a_missing_builtin_model_is_listed_honestly(settings: Settings, tmp_path: Path) -> None:
    from stable_diffusion_api.sd_api import create_app

    fake = FakeGenerator(tmp_path / "nowhere" / "dali-tiny.safetensors")
    with TestClient(create_app(settings, fake)) as client:
        tiny = client.get("/api/v1/models").json()[0]
        assert not tiny["available"] and "not been trained yet" in tiny["error"]
        project = make_project(client)
        response = client.post(f"/api/v1/projects/{project['id']}/generations",
                               json={"prompt": "a"})  # fmt: skip
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "model"


def test_samplers_list_names_and_a1111_labels(client: TestClient) -> None:
    samplers = client.get("/api/v1/samplers").json()
    euler_a = {"name": "euler_a", "display_name": "Euler a", "aliases": ["k_euler_a"],
               "max_steps": 150}  # fmt: skip
    assert euler_a in samplers
    assert next(s for s in samplers if s["name"] == "lcm")["max_steps"] == 50


def test_a_symlinked_checkpoint_keeps_its_link_name(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    target = write_fake_checkpoint(tmp_path / "elsewhere" / "model-1234.safetensors")
    (settings.resolved_models_dir / "my-model.safetensors").symlink_to(target)
    names = [m["name"] for m in client.get("/api/v1/models").json()]
    assert names == ["dali-tiny", "my-model"]


def test_a_failing_speed_record_does_not_fail_the_generation(
    client: TestClient, fake: FakeGenerator
) -> None:
    studio = client.app.state.studio  # type: ignore[attr-defined]
    calls: list[object] = []

    def broken(*args: object) -> None:
        calls.append(args)
        raise OSError("database is locked")

    studio.speeds.record = broken
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"], steps=3)["id"])
    assert done["status"] == "succeeded" and len(done["images"]) == 1
    deadline = time.monotonic() + 5
    while not calls:  # it was tried (after the job was announced)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.get("/api/v1/hardware").json()[0]["speeds"] == []


def test_a_new_checkpoint_is_hashed_once_when_two_processes_list_it_at_once(
    settings: Settings, fake: FakeGenerator
) -> None:
    # The web process and a worker each keep a registry over the same database and data
    # directory; both list the models as a new file appears (a request and a heartbeat).
    db = Database(settings.resolved_database_url)
    db.migrate()
    registries = [ModelRegistry(settings, db, fake) for _ in range(2)]
    write_fake_checkpoint(settings.resolved_models_dir / "new.safetensors", payload=b"x")
    calls = []
    original = fake.inspect_checkpoint

    def slow_inspect(path: Path) -> CheckpointSpec:
        calls.append(path.name)
        time.sleep(0.3)  # hashing a large file takes a while: long enough to overlap
        return original(path)

    fake.inspect_checkpoint = slow_inspect  # type: ignore[method-assign]
    with ThreadPoolExecutor(2) as pool:
        listings = list(pool.map(lambda registry: registry.list(), registries))
    assert [[entry.name for entry in listing] for listing in listings] == [["dali-tiny", "new"]] * 2
    assert listings[0][1].sha256 == listings[1][1].sha256 is not None
    assert calls.count("new.safetensors") == 1
    db.dispose()
