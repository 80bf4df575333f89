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
from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.job_queue import CANCELED_RUNNING, JobQueue
from stable_diffusion_api.services.pg_notify import (
    NodeLive,
    WebLive,
    libpq_conninfo,
    node_live,
    web_live,
)
from stable_diffusion_api.services.progress import ProgressHub
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


def test_a_remote_nodes_job_streams_and_cancels_through_the_real_routes(
    postgres: PostgresServer, settings: Settings, fake: FakeGenerator
) -> None:
    url = postgres.new_database()
    settings = settings.model_copy(update={"database_url": url})
    with TestClient(create_app(settings, fake)) as client:
        studio = client.app.state.studio  # type: ignore[attr-defined]
        assert studio.live is not None and studio.live.listener.connected.wait(10)
        project = make_project(client)
        # The web host's own worker is busy with a job; the "node" claims the next one.
        fake.block_at = 1
        local = submit(client, project["id"], prompt="here")
        assert fake.reached.wait(10)
        remote = submit(client, project["id"], prompt="there", steps=6)
        device = client.get(f"/api/v1/generations/{remote['id']}").json()["device"]
        node_db = Database(url)
        jobs = JobQueue(node_db)
        claimed = jobs.claim(device, "node-b-1")
        assert claimed is not None and claimed[0].id == remote["id"]
        node = node_live(url)
        assert node is not None
        canceled = threading.Event()
        node.hub.cancel_listeners.append(lambda job_id, keep: canceled.set())

        reported: dict[int, float] = {}  # step → when the node reported it
        streamed: dict[int, float] = {}  # step → when its progress event came to the page

        def run_on_node() -> None:
            node.hub.start(remote["id"], 6)
            for step in (1, 2, 3):
                time.sleep(0.1)
                reported[step] = time.monotonic()
                node.hub.step(remote["id"], step, 6, 0.1)
            node.hub.preview_latent(remote["id"], np.zeros((4, 64, 64), np.float32), 3)
            assert canceled.wait(10)  # the worker stops at its next step
            jobs.finish(remote["id"], FailureKind.CANCELLED, CANCELED_RUNNING)
            node.hub.finish(remote["id"], "canceled")

        events: list[tuple[str, dict[str, Any]]] = []
        stream = client.stream("GET", f"/api/v1/generations/{remote['id']}/events")
        with running(node), ThreadPoolExecutor(2) as pool, stream as response:
            assert response.status_code == 200
            name, lines = None, response.iter_lines()
            for line in lines:
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[6:])))
                    if name == "status":
                        break
            assert events[0][1]["status"] == "running"
            node_run = pool.submit(run_on_node)
            cancel = None
            for line in lines:
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: ") and name:
                    events.append((name, json.loads(line[6:])))
                    data = events[-1][1]
                    if name == "progress" and data["step"] > 0:  # 0: the start
                        streamed.setdefault(data["step"], time.monotonic())
                    if name == "progress" and data["step"] == 3 and "preview" in data:
                        asked = time.monotonic()
                        cancel = pool.submit(
                            client.post, f"/api/v1/generations/{remote['id']}/cancel"
                        )
                        assert canceled.wait(2) and time.monotonic() - asked < 0.5
            node_run.result(10)
            assert cancel is not None and cancel.result(10).status_code == 200
        progress = [data for name, data in events if name == "progress"]
        assert progress and all(data["total"] == 6 for data in progress)
        assert [data["step"] for data in progress] == sorted(data["step"] for data in progress)
        assert progress[-1]["step"] == 3
        # Progress reaches the page within the 0.5 s (each step seen, from its report).
        assert streamed and all(streamed[step] - reported[step] < 0.5 for step in streamed)
        previews = [data["preview"] for data in progress if "preview" in data]
        assert len(previews) == 1 and previews[0].startswith("data:image/png;base64,")
        assert events[-1][0] == "done" and events[-1][1]["status"] == "canceled"
        fake.release.set()
        assert wait_for(client, local["id"])["status"] == "succeeded"
        node_db.dispose()
