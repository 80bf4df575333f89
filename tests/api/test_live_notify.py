"""Live view across hosts over a real PostgreSQL's LISTEN/NOTIFY (tests/postgres.py): a node's
reports published in another process reach the web host's hub in order and fast, cancels and
"work queued" reach a node at once, both ends survive their connections being killed, and a job
run by a "remote node" streams its progress through the real SSE route and is canceled there.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.device_worker import DeviceWorker
from stable_diffusion_api.services.job_queue import JobQueue
from stable_diffusion_api.services.pg_notify import (
    NodeLive,
    WebLive,
    libpq_conninfo,
    node_live,
    web_live,
)
from stable_diffusion_api.services.progress import ProgressHub
from stable_diffusion_api.services.registry import ModelRegistry
from stable_diffusion_api.services.speeds import SpeedService
from stable_diffusion_api.services.storage import ImageStorage
from stable_diffusion_api.services.worker_context import WorkerContext
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for
from tests.postgres import PostgresServer, server_binaries

ROOT = Path(__file__).resolve().parents[2]

# A worker node's hub in its own process: start, STEPS steps 5 ms apart with a 1024² preview
# every 10th, finish; then prints when it reported each step (time.time()).
NODE = """
import json, sys, time
import numpy as np
from stable_diffusion_api.services.pg_notify import node_live
live = node_live(sys.argv[1])
live.start()
hub, steps = live.hub, int(sys.argv[2])
hub.start(7, steps)
time.sleep(0.5)  # its connection is made on the first report
sent = []
latent = np.random.default_rng(0).standard_normal((4, 128, 128)).astype(np.float32)
for step in range(1, steps + 1):
    sent.append(time.time())
    hub.step(7, step, steps, 0.005)
    if step % 10 == 0:
        hub.preview_latent(7, latent, step)
    time.sleep(0.005)
hub.finish(7, "succeeded", {"id": 7, "status": "succeeded"})
live.stop()
print(json.dumps({"sent": sent, "dropped": live.sender.dropped}))
"""


class RecordingHub(ProgressHub):
    """A web host's hub that also notes each call it gets, with when (time.time())."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, float]] = []  # (what, step or total, when)
        self.ended = threading.Event()

    def start(self, generation_id: int, total: int) -> None:
        self.calls.append(("start", total, time.time()))
        super().start(generation_id, total)

    def step(self, generation_id: int, step: int, total: int, step_seconds: float | None) -> None:
        self.calls.append(("step", step, time.time()))
        super().step(generation_id, step, total, step_seconds)

    def preview_latent(self, generation_id: int, latent: np.ndarray, step: int) -> None:
        self.calls.append(("preview", step, time.time()))
        super().preview_latent(generation_id, latent, step)

    def finish(self, generation_id: int, status: str, result: dict[str, Any] | None = None) -> None:
        self.calls.append(("finish", 0, time.time()))
        super().finish(generation_id, status, result)
        self.ended.set()


@contextmanager
def running(live: WebLive | NodeLive) -> Iterator[None]:
    live.start()
    try:
        assert live.listener.connected.wait(10)
        yield
    finally:
        live.stop()


def kill_connections(url: str) -> int:
    """End every other session on the database (as a server restart would): how many."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            return len(
                connection.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).all()
            )
    finally:
        admin.dispose()


def test_a_nodes_reports_reach_the_web_hub_in_order_and_fast(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    conninfo = libpq_conninfo(url)
    assert conninfo is not None
    hub = RecordingHub()
    steps = 120
    with running(WebLive(conninfo, hub)):
        node = subprocess.run(
            [sys.executable, "-c", NODE, conninfo, str(steps)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert node.returncode == 0, node.stderr
        assert hub.ended.wait(5)
    report = json.loads(node.stdout)
    assert report["dropped"] == 0
    expected = [("start", steps)]
    for step in range(1, steps + 1):
        expected.append(("step", step))
        if step % 10 == 0:
            expected.append(("preview", step))
    expected.append(("finish", 0))
    assert [(what, number) for what, number, _ in hub.calls] == expected
    arrived = {number: when for what, number, when in hub.calls if what == "step"}
    delays = sorted(arrived[step] - report["sent"][step - 1] for step in range(1, steps + 1))
    p50, p99 = statistics.median(delays), delays[int(0.99 * len(delays)) - 1]
    print(f"step → web hub over NOTIFY: p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
          f"max {delays[-1] * 1e3:.1f} ms ({steps} steps)")  # fmt: skip
    assert p99 < 0.5  # the bound for progress reaching the page
    state = hub.get(7)
    assert state is not None and state.status == "succeeded" and state.preview_step == steps
    assert state.preview_png is not None and state.preview_png.startswith(b"\x89PNG")


def test_cancel_and_new_work_reach_a_node_at_once(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    web = web_live(url, ProgressHub())
    node = node_live(url)
    assert web is not None and node is not None
    heard: list[tuple[int, bool, float]] = []
    told = threading.Event()

    def worker_stub(job_id: int, keep_partial: bool) -> None:  # a WorkerPool's `_cancel`
        heard.append((job_id, keep_partial, time.monotonic()))
        told.set()

    node.hub.cancel_listeners.append(worker_stub)  # as a WorkerPool on the node's hub does
    woken: list[str] = []
    node.on_work = woken.append
    local: list[str] = []
    wake = web.waking(local.append)
    with running(web), running(node):
        asked = time.monotonic()
        web.hub.request_cancel(41)  # what GenerationService.cancel does for a running job
        assert told.wait(2)
        assert heard[0][:2] == (41, False) and heard[0][2] - asked < 0.5
        assert node.hub.cancel_requested(41)
        told.clear()
        web.hub.request_cancel(42, keep_partial=True)  # A1111's interrupt
        assert told.wait(2) and heard[1][:2] == (42, True)

        seen = node.work_count()
        asked = time.monotonic()
        wake("cuda:0")  # what GenerationService.submit calls
        assert node.wait_for_work(2, seen)
        assert time.monotonic() - asked < 0.5
        assert local == ["cuda:0"] and woken == ["cuda:0"]
        assert not node.wait_for_work(0.1)  # nothing new since


def test_both_ends_come_back_after_their_connections_are_killed(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    hub = RecordingHub()
    web = web_live(url, hub)
    node = node_live(url)
    assert web is not None and node is not None
    told = threading.Event()
    node.hub.cancel_listeners.append(lambda job_id, keep: told.set())
    with running(web), running(node):
        node.hub.start(5, 100)
        deadline = time.monotonic() + 5
        while not hub.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert hub.calls[0][:2] == ("start", 100)
        assert kill_connections(url) >= 3  # the web host's two, the node's two (one unused yet)
        # Both listeners see their connection gone, reconnect at once and listen again.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            web.listener.connections == 2 and node.listener.connections == 2
            and web.listener.connected.is_set() and node.listener.connected.is_set()
        ):  # fmt: skip
            time.sleep(0.02)
        assert web.listener.connections == 2 and node.listener.connections == 2
        # The node's sender loses the report in hand, reconnects and carries on.
        step = 0
        while time.monotonic() < deadline and not any(c[0] == "step" for c in hub.calls):
            step += 1
            node.hub.step(5, step, 100, 0.1)
            time.sleep(0.05)
        arrived = [number for what, number, _ in hub.calls if what == "step"]
        assert arrived and arrived[0] <= 2, arrived  # at most the first was lost
        assert node.sender.dropped <= 1
        web.cancel(5)  # the web host's sender came back too
        assert told.wait(2)


def restart(server: PostgresServer) -> None:
    """Stop the test session's PostgreSQL (ending every session) and start it again, with the
    options it was started with (pg_ctl keeps them) and its log file (else the server would
    hold this call's output pipes open)."""
    binaries = server_binaries()
    assert binaries is not None
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    root = server.socket_dir
    command = [
        str(binaries / "pg_ctl"),
        "restart",
        "-w",
        "-m",
        "fast",
        "-l",
        str(root / "server.log"),
    ]
    done = subprocess.run(
        [*prefix, *command, "-D", str(root / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_ends_carry_on_after_a_server_restart(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    hub = RecordingHub()
    web = web_live(url, hub)
    node = node_live(url)
    assert web is not None and node is not None
    told = threading.Event()
    node.hub.cancel_listeners.append(lambda job_id, keep: told.set())
    with running(web), running(node):
        node.hub.start(6, 50)
        restart(postgres)
        began = time.monotonic()
        step = 0
        while time.monotonic() - began < 10 and not any(c[0] == "step" for c in hub.calls):
            step += 1
            node.hub.step(6, step, 50, 0.1)  # lost while the server is away, then heard
            time.sleep(0.05)
        assert any(c[0] == "step" for c in hub.calls), node.sender.dropped
        assert web.listener.connections >= 2 and node.listener.connections >= 2
        assert node.listener.connected.wait(5)
        web.cancel(6)
        assert told.wait(5)


def test_a_job_run_by_a_remote_node_streams_and_cancels_through_the_real_routes(
    postgres: PostgresServer, settings: Settings, fake: FakeGenerator
) -> None:
    """The web app (its own worker kept busy) and a "node": a real `DeviceWorker` with an engine,
    database connections and a `NodeLive` hub of its own, polling only every 30 s. A job queued
    on the web host wakes the node, its progress and preview come through the SSE route within
    0.5 s, and the cancel route stops it within a step."""
    url = postgres.new_database()
    settings = settings.model_copy(update={"database_url": url})
    with TestClient(create_app(settings, fake)) as client:
        studio = client.app.state.studio  # type: ignore[attr-defined]
        assert studio.live is not None and studio.live.listener.connected.wait(10)
        project = make_project(client)
        fake.block_at = 1  # the web host's own worker: busy from now on
        local = submit(client, project["id"], prompt="here")
        assert fake.reached.wait(10)
        device = client.get(f"/api/v1/generations/{local['id']}").json()["device"]

        node = node_live(url)
        assert node is not None
        reported: dict[int, float] = {}  # step → when the node's worker reported it
        report_step = node.hub.step

        def step(job_id: int, number: int, total: int, seconds: float | None) -> None:
            reported.setdefault(number, time.monotonic())
            report_step(job_id, number, total, seconds)

        node.hub.step = step  # type: ignore[method-assign]
        node_db = Database(url)
        node_engine = FakeGenerator(fake.builtin)
        node_engine.step_delay = 0.1
        node_settings = settings.model_copy(update={"poll_s": 30.0})  # woken, or nothing
        context = WorkerContext(
            settings=node_settings, jobs=JobQueue(node_db), engine=node_engine,
            models=ModelRegistry(node_settings, node_db, node_engine),
            storage=ImageStorage(settings.resolved_data_dir), hub=node.hub,
            speeds=SpeedService(node_db),
            instance_id=studio.workers.instance_id,  # under a live heartbeat (nodes: its own)
            stopping=threading.Event(),
        )  # fmt: skip
        worker = DeviceWorker(context, device)
        node.hub.cancel_listeners.append(worker.request_cancel)  # as a WorkerPool does
        node.on_work = lambda _device: worker.wake()

        streamed: dict[int, float] = {}  # step → when its progress event came to the page
        events: list[tuple[str, dict[str, Any]]] = []
        with running(node), ThreadPoolExecutor(1) as pool:
            worker.start()
            time.sleep(0.2)  # it has looked at the queue, found nothing: it sleeps 30 s
            remote = submit(client, project["id"], prompt="there", steps=30)
            # Should the node never run it, the job is canceled after 20 s: the stream ends.
            give_up = threading.Timer(20, studio.generations.cancel, (remote["id"],))
            give_up.start()
            stream = client.stream("GET", f"/api/v1/generations/{remote['id']}/events")
            cancel, steps_then = None, 0
            with stream as response:
                assert response.status_code == 200
                name = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                        continue
                    if not (line.startswith("data: ") and name):
                        continue
                    events.append((name, json.loads(line[6:])))
                    data = events[-1][1]
                    if name == "progress" and data["step"] > 0:  # 0: the start
                        streamed.setdefault(data["step"], time.monotonic())
                    if cancel is None and name == "progress" and "preview" in data:
                        steps_then = node_engine.steps_run["there"]
                        url_cancel = f"/api/v1/generations/{remote['id']}/cancel"
                        cancel = pool.submit(client.post, url_cancel)
            give_up.cancel()
            assert cancel is not None and cancel.result(10).status_code == 200
            context.stopping.set()
            worker.stop()
            worker.join(10)
        node_db.dispose()
        progress = [data for name, data in events if name == "progress"]
        assert progress and all(data["total"] == 30 for data in progress)
        assert [data["step"] for data in progress] == sorted(data["step"] for data in progress)
        previews = [data["preview"] for data in progress if "preview" in data]
        assert previews and previews[0].startswith("data:image/png;base64,")
        # Progress reaches the page within the 0.5 s of its report on the node.
        assert streamed and all(streamed[n] - reported[n] < 0.5 for n in streamed), (
            streamed, reported)  # fmt: skip
        # The cancel came over NOTIFY: the node stopped within a step (the row's flag, polled
        # once a second, would have let it run about ten more).
        assert node_engine.steps_run["there"] - steps_then <= 2
        assert events[-1][0] == "done" and events[-1][1]["status"] == "canceled"
        assert events[-1][1]["failure_kind"] == "cancelled"
        fake.release.set()
        assert wait_for(client, local["id"])["status"] == "succeeded"
