"""Ctrl+C stops the studio quietly: the terminal sends SIGINT to the whole process group (the
server and its worker processes); the server shuts the workers down itself, and nobody prints a
traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.api.test_browser import free_port

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]


def children_of(pid: int) -> list[int]:
    """The processes `pid` started, from any of its threads."""
    return [int(child) for task in Path(f"/proc/{pid}/task").glob("*/children")
            for child in task.read_text().split()]  # fmt: skip


def test_ctrl_c_stops_server_and_workers_without_a_traceback(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"DALI_DATA_DIR": str(tmp_path / "data"), "DALI_PORT": str(port),
                        "OMP_NUM_THREADS": "1"}  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        # Its own process group, as a shell gives a foreground job.
        server = subprocess.Popen(
            [sys.executable, "-m", "stable_diffusion_api"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        while not children_of(server.pid):  # the CPU worker process
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        workers = children_of(server.pid)
        os.killpg(server.pid, signal.SIGINT)
        server.wait(60)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    output = log.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    assert server.returncode == 0, output
    # Every process it started ends too (multiprocessing's helpers read their pipes' end).
    deadline = time.monotonic() + 15
    while alive := [pid for pid in workers if running(pid)]:
        assert time.monotonic() < deadline, f"still running after the server stopped: {alive}"
        time.sleep(0.2)


def running(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text().lower()
    except FileNotFoundError:
        return False
