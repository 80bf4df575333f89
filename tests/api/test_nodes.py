"""Nodes (services/nodes.py): routing a claim by device form and model, the node recorded and
named when its process dies, handing a job back, the registry of live nodes and its name rule,
and what the API says about nodes and about jobs no live node can run. SQLite and PostgreSQL
for the statements; the fake engine for the API."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.models import Generation, Project, WorkerProcess, utcnow
from stable_diffusion_api.services.generator import DeviceSpec
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.nodes import (
    Node,
    NodeModel,
    NodeNameTaken,
    NodeRegistry,
    accepted_forms,
    spec_json,
    waiting_reason,
)
from tests.api.helpers import make_project, migrated_database, wait_for

GPU = DeviceSpec("cuda:0", "cuda", "Fake GPU", 8 << 30, 6 << 30, 80, "8.6",
                 ("float16", "float32"), "float16")  # fmt: skip
CPU = DeviceSpec("cpu", "cpu", "Fake CPU", 16 << 30, 8 << 30, 8, None, ("float32",), "float32")
TINY = ("dali-tiny", "aaaaaaaaaa")
HELD = (["dali-tiny"], ["aaaaaaaaaa"])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = migrated_database(request, tmp_path)
    with database.session() as session:
        session.add(Project(id=1, name="p", device="cpu"))
    yield database
    database.dispose()


def queue_job(queue: JobQueue, device: str, model: tuple[str, str | None] = TINY) -> int:
    values = {"project_id": 1, "device": device, "dtype": None, "model": model[0],
              "model_hash": model[1], "prompt": "a", "steps": 4, "guidance": 7.5, "seed": 1}  # fmt: skip
    queued = queue.enqueue(values, queue_limit=50)
    assert queued is not None
    return queued.id


def test_a_device_accepts_its_node_id_its_plain_id_its_kind_and_auto() -> None:
    assert accepted_forms("gpu-b", "cuda:0") == ("gpu-b/cuda:0", "cuda:0", "cuda", "auto")
    assert accepted_forms("gpu-b", "cpu") == ("gpu-b/cpu", "cpu", "auto")


def test_claims_go_to_the_node_with_the_device_and_the_model(db: Database) -> None:
    queue = JobQueue(db)
    pinned_c = queue_job(queue, "gpu-c/cuda:0")
    other_model = queue_job(queue, "cuda", ("sd15", "bbbbbbbbbb"))
    any_cuda = queue_job(queue, "cuda")
    on_cpu = queue_job(queue, "cpu")
    pinned_b = queue_job(queue, "gpu-b/cuda:0")
    anywhere = queue_job(queue, "auto")
    b_gpu, b_cpu = accepted_forms("gpu-b", "cuda:0"), accepted_forms("gpu-b", "cpu")

    claimed = []
    while (got := queue.claim(b_gpu, "proc-b", HELD, "gpu-b")) is not None:
        claimed.append(got[0])
    # Oldest first among what fits: not gpu-c's, not the model gpu-b lacks, not the CPU's.
    assert [row.id for row in claimed] == [any_cuda, pinned_b, anywhere]
    assert {(row.node, row.worker_id) for row in claimed} == {("gpu-b", "proc-b")}
    cpu_job = queue.claim(b_cpu, "proc-b", HELD, "gpu-b")
    assert cpu_job is not None and cpu_job[0].id == on_cpu
    # The model is found by its short hash too (a node may name the file otherwise).
    renamed = queue.claim(b_gpu, "proc-b", (["v1-5"], ["bbbbbbbbbb"]), "gpu-b")
    assert renamed is not None and renamed[0].id == other_model
    with db.session() as session:
        row = session.get(Generation, pinned_c)
        assert row is not None and (row.status, row.node) == ("queued", None)


def test_claims_of_two_nodes_at_once_take_each_job_once(db: Database) -> None:
    queue = JobQueue(db)
    ids = [queue_job(queue, device) for device in ["cuda", "auto", "cuda:0"] * 6]
    taken: dict[str, list[int]] = {"gpu-b": [], "gpu-c": []}

    def drain(node: str) -> None:
        while (got := queue.claim(accepted_forms(node, "cuda:0"), node, HELD, node)) is not None:
            taken[node].append(got[0].id)

    threads = [threading.Thread(target=drain, args=(node,)) for node in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(taken["gpu-b"] + taken["gpu-c"]) == ids  # every job once
    with db.session() as session:
        nodes = {i: node for i, node in session.execute(select(Generation.id, Generation.node))}
    assert all(nodes[i] == node for node, mine in taken.items() for i in mine)


def test_a_dead_nodes_job_fails_naming_it_and_a_stopping_node_hands_its_job_back(
    db: Database,
) -> None:
    queue = JobQueue(db)
    first, second = queue_job(queue, "cpu"), queue_job(queue, "cpu")
    assert queue.claim(("cpu",), "proc-b", HELD, "gpu-b") is not None
    assert queue.claim(("cpu",), "proc-c", HELD, "gpu-c") is not None
    assert queue.hand_back(second, "proc-b") is False  # not its job: nothing changes
    assert queue.hand_back(second, "proc-c") is True
    assert queue.fail_orphaned(alive={"proc-c"}) == [first]
    with db.session() as session:
        dead, back = session.get(Generation, first), session.get(Generation, second)
        assert dead is not None and back is not None
        assert (dead.status, dead.failure_kind) == ("failed", "interrupted")
        assert dead.error == "interrupted: node gpu-b stopped while this job was running"
        assert (back.status, back.node, back.worker_id, back.started_at) == (
            "queued", None, None, None
        )  # fmt: skip
    again = queue.claim(("cpu",), "proc-c", HELD, "gpu-c")
    assert again is not None and again[0].id == second


def test_waiting_reasons_say_what_no_live_node_has() -> None:
    nodes = [Node("gpu-b", (GPU,), (NodeModel("dali-tiny", None, "aaaaaaaaaa"),)),
             Node("box", (CPU,), (NodeModel("sd15", None, "bbbbbbbbbb"),))]  # fmt: skip
    assert waiting_reason(nodes, "cuda", "dali-tiny", None) is None
    assert waiting_reason(nodes, "auto", "sd15", None) is None
    assert waiting_reason(nodes, "mps", "dali-tiny", None) == "no live node has an mps device"
    assert waiting_reason(nodes, "cuda:1", "dali-tiny", None) == ("no live node has device cuda:1")
    assert waiting_reason(nodes, "cuda", "sd15", None) == (
        "no live node with a cuda device has model sd15"
    )
    assert waiting_reason(nodes, "auto", "sdxl", None) == "no live node has model sdxl"
    assert waiting_reason(nodes, "cuda", "renamed", "aaaaaaaaaa") is None  # by its hash
    assert "node gpu-x is not live" in str(waiting_reason(nodes, "gpu-x/cuda:0", "sd15", None))
    assert waiting_reason(nodes, "gpu-b/cpu", "dali-tiny", None) == "node gpu-b has no device cpu"


def register(db: Database, name: str, host: str, pid: int, age_s: float = 0.0) -> None:
    with db.session() as session:
        session.add(
            WorkerProcess(
                id=f"{host}-{pid}-{name}",
                hostname=host,
                pid=pid,
                heartbeat_at=utcnow() - dt.timedelta(seconds=age_s),
                node=name,
                devices=[spec_json(GPU)],
                models=[{"name": "dali-tiny", "sha256": None, "short_hash": "aaaaaaaaaa"}],
            )
        )


def test_the_registry_lists_live_nodes_and_keeps_set_names_unique(db: Database) -> None:
    registry = NodeRegistry(db, "gpu-b", stale_after_s=5)
    register(db, "gpu-c", "host-c", 11)
    register(db, "old", "host-o", 12, age_s=60)  # stale: gone
    register(db, "gpu-c", "host-c", 13)  # a second process of the same node: listed once
    [node] = registry.others()
    assert (node.name, [d.id for d in node.devices]) == ("gpu-c", ["cuda:0"])
    assert node.holds("dali-tiny") and not node.holds("sd15")

    registry.check_name_free(explicit=True)  # nobody runs as gpu-b
    register(db, "gpu-b", "host-b", 14)
    with pytest.raises(NodeNameTaken, match="DALI_NODE_NAME='gpu-b' is already used"):
        registry.check_name_free(explicit=False)  # another host's: taken even by default
    here = NodeRegistry(db, "mine", stale_after_s=5)
    register(db, "mine", socket.gethostname(), 1)  # pid 1 lives: this host's other process
    here.check_name_free(explicit=False)  # the default name is shared by one host's processes
    with pytest.raises(NodeNameTaken):
        here.check_name_free(explicit=True)
    with db.session() as session:  # its heartbeat stops: the name is free again
        session.execute(update(WorkerProcess).where(WorkerProcess.node == "mine")
                        .values(heartbeat_at=utcnow() - dt.timedelta(seconds=60)))  # fmt: skip
    here.check_name_free(explicit=True)


def test_the_api_lists_other_nodes_and_says_why_a_job_waits(
    client: TestClient, settings: Settings
) -> None:
    db = Database(settings.resolved_database_url)
    register(db, "gpu-b", "host-b", 21)
    own = settings.resolved_node_name
    ids = [d["id"] for d in client.get("/api/v1/hardware").json()]
    assert ids == [f"{own}/cpu", f"{own}/cuda:0", "gpu-b/cuda:0"]
    project = make_project(client)
    jobs = f"/api/v1/projects/{project['id']}/generations"

    # A job for gpu-b's device is accepted and stays queued (no worker here runs it).
    pinned = client.post(jobs, json={"prompt": "a", "device": "gpu-b/cuda:0"})
    assert pinned.status_code == 202
    view = client.get(f"/api/v1/generations/{pinned.json()['id']}").json()
    assert (view["status"], view["device"], view["waiting_reason"]) == (
        "queued", "gpu-b/cuda:0", None
    )  # fmt: skip
    refused = client.post(jobs, json={"prompt": "a", "device": "gpu-x/cuda:0"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][-1] == "device"
    # gpu-b stops beating: the job says why it waits, and gpu-b leaves the listing.
    with db.session() as session:
        session.execute(update(WorkerProcess).where(WorkerProcess.node == "gpu-b")
                        .values(heartbeat_at=utcnow() - dt.timedelta(seconds=60)))  # fmt: skip
    view = client.get(f"/api/v1/generations/{pinned.json()['id']}").json()
    assert view["status"] == "queued"
    assert view["waiting_reason"].startswith("node gpu-b is not live")
    assert [d["id"] for d in client.get("/api/v1/hardware").json()] == ids[:2]
    page = client.get(f"/generations/{pinned.json()['id']}")
    assert "node gpu-b is not live" in page.text

    # A job this node runs records it.
    done_id = client.post(jobs, json={"prompt": "b", "steps": 2}).json()["id"]
    done = wait_for(client, done_id)
    assert (done["status"], done["node"]) == ("succeeded", own)
    db.dispose()


def test_a_dead_worker_process_fails_the_job_it_ran_whatever_form_it_asked(
    db: Database,
) -> None:
    queue = JobQueue(db)
    on_gpu, on_cpu = queue_job(queue, "auto"), queue_job(queue, "auto")
    gpu, cpu = accepted_forms("box", "cuda:0"), accepted_forms("box", "cpu")
    assert queue.claim(gpu, "server-1", HELD, "box") is not None
    assert queue.claim(cpu, "server-1", HELD, "box") is not None
    # The CPU worker's child died running `on_cpu`: only that job fails, though both are
    # "auto" jobs of the same owner.
    assert queue.fail_dead_worker(cpu, "server-1", -9, on_cpu) == [on_cpu]
    with db.session() as session:
        row = session.get(Generation, on_gpu)
        assert row is not None and row.status == "running"


def test_a_stopping_worker_command_hands_its_running_job_back(settings: Settings) -> None:
    from stable_diffusion_api.schemas import GenerationCreate
    from stable_diffusion_api.services.studio import Studio
    from stable_diffusion_api.worker_command import parse
    from tests.api.fakes import FakeGenerator, write_fake_checkpoint

    assert parse(["--device", "cuda:0,CPU", "--device", "mps"]).device == ["cuda:0", "cpu", "mps"]
    fake = FakeGenerator(
        write_fake_checkpoint(settings.resolved_models_dir / "dali-tiny.safetensors")
    )
    node = settings.model_copy(update={"node_name": "box"})
    studio = Studio(node, fake, devices=["cpu"], node_command=True)
    studio.start()
    try:
        assert [d.id for d in studio.hardware.devices] == ["box/cpu"]  # --device cpu only
        project = studio.projects.get_or_create("p")
        fake.block_at = 2
        job = studio.generations.submit(project.id, GenerationCreate(prompt="a", steps=4))
        assert fake.reached.wait(10)
        studio.workers.stopping.set()  # what SIGTERM does, through studio.stop()
        fake.release.set()
    finally:
        studio.stop()
    db = Database(node.resolved_database_url)
    with db.session() as session:
        row = session.get(Generation, job.id)
        assert row is not None and (row.status, row.node, row.worker_id) == ("queued", None, None)
        assert session.scalars(select(WorkerProcess)).all() == []  # the node has left
    db.dispose()


def test_a_web_host_without_workers_asks_a_node_for_a_benchmark(
    settings: Settings, tmp_path: Path
) -> None:
    import time

    from stable_diffusion_api.services.studio import Studio
    from tests.api.fakes import FakeGenerator, write_fake_checkpoint

    database = f"sqlite:///{tmp_path / 'shared.db'}"
    studios = []
    for name, runs in (("web", False), ("gpu-b", True)):
        data = tmp_path / name
        own = settings.model_copy(update={"node_name": name, "run_workers": runs,
                                          "data_dir": data, "models_dir": data / "models",
                                          "database_url": database})  # fmt: skip
        fake = FakeGenerator(write_fake_checkpoint(data / "models" / "dali-tiny.safetensors"))
        studio = Studio(own, fake)
        studio.start()
        studios.append(studio)
    web, node = studios
    try:
        assert web.workers.workers == {}  # no worker of its own
        assert [d.id for d in web.hardware.devices] == ["gpu-b/cpu", "gpu-b/cuda:0"]
        asked = web.workers.benchmark("gpu-b/cpu", None, None, 64, 64, 4)
        assert (asked.device, asked.status) == ("gpu-b/cpu", "queued")
        deadline = time.monotonic() + 15
        while (seen := web.workers.benchmark_views()[0]).status not in ("done", "failed"):
            assert time.monotonic() < deadline, seen
            time.sleep(0.1)
        assert seen.status == "done", seen.error
        [speed] = web.speeds.list()
        assert (speed.device, speed.width, speed.source) == ("gpu-b/cpu", 64, "benchmark")
        estimate = web.generations.estimate("cpu", None, None, 64, 64, 20, 1)
        assert estimate.seconds is not None  # a plain "cpu" finds gpu-b's measurement
    finally:
        for studio in studios:
            studio.stop()


def test_the_worker_command_refuses_a_bad_node_name_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from stable_diffusion_api.worker_command import EXIT_SETTINGS, main

    monkeypatch.setenv("DALI_NODE_NAME", "gpu/b")  # a "/" would break node/device ids
    assert main([]) == EXIT_SETTINGS
    assert "DALI_NODE_NAME='gpu/b'" in capsys.readouterr().err


@pytest.mark.postgres
def test_a_node_that_loses_the_database_carries_on_when_it_is_back(
    postgres: Any, settings: Settings
) -> None:
    import time

    from sqlalchemy import create_engine, text

    from stable_diffusion_api.schemas import GenerationCreate
    from stable_diffusion_api.services.studio import Studio
    from tests.api.fakes import FakeGenerator, write_fake_checkpoint

    url = postgres.new_database()
    name = url.split("@/", 1)[1].split("?")[0]  # postgresql+psycopg://user@/NAME?host=…
    node = settings.model_copy(update={"node_name": "gpu-b", "database_url": url})
    fake = FakeGenerator(write_fake_checkpoint(node.resolved_models_dir / "dali-tiny.safetensors"))
    studio = Studio(node, fake)
    studio.start()
    admin = create_engine(postgres.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        project = studio.projects.get_or_create("p")
        with admin.connect() as connection:  # the database goes away for two seconds
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            lost = time.monotonic()
            while time.monotonic() - lost < 2:
                connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        f"WHERE datname = '{name}'"))  # fmt: skip
                time.sleep(0.05)
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        job = studio.generations.submit(project.id, GenerationCreate(prompt="a", steps=2))
        done = studio.generations.wait(job.id, timeout=20)
        assert (done.status, done.node) == ("succeeded", "gpu-b")  # its worker carried on
        time.sleep(3 * node.heartbeat_s)
        assert [n.name for n in studio.hardware.nodes()] == ["gpu-b"]
        assert NodeRegistry(studio.db, "web", node.stale_after_s).others()[0].name == "gpu-b"
    finally:
        studio.stop()
        admin.dispose()
