"""A real uvicorn serving Dali (with the A1111 router and the real engine) for the `webuiapi`
tests and the kill -9 soak test: `running_server(root)` starts it on a free port with its data
under `root/data` and checkpoints in `root/models`, waits for `/internal/ping`, and stops it on
the way out. The server leads a process group of its own (its worker processes are in it), so
a test can kill all of it at once: `os.killpg(server.process.pid, signal.SIGKILL)`.

The model is the built-in one when `data/models/dali-tiny.safetensors` exists; otherwise
`write_random_checkpoint` gives a random-weight tiny checkpoint for the test to select.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import webuiapi  # the A1111 client library from PyPI (requirements-dev)

import sd_core

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    log: Path
    builtin: bool  # the built-in model exists; else the random checkpoint is the main model
    data: Path  # the server's data directory
    process: subprocess.Popen[bytes]  # uvicorn, the leader of the server's process group

    def api(self) -> Any:
        host, port = self.url.removeprefix("http://").split(":")
        return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=2)

    def rest(self, path: str) -> Any:
        response = requests.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()


def title_of(api: Any, model_name: str) -> str:
    return next(m["title"] for m in api.get_sd_models() if m["model_name"] == model_name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_random_checkpoint(path: Path) -> None:
    from sd_core.checkpoint import save_checkpoint
    from sd_core.config import TINY_TEST
    from tests.reference import random_checkpoint

    save_checkpoint(path, random_checkpoint(TINY_TEST), TINY_TEST)


@contextmanager
def running_server(
    root: Path, factory: str = "tests.a1111.server_app:build", **environment: str
) -> Iterator[Server]:
    """uvicorn serving `factory`'s app on `root/data` and `root/models` (made by the caller),
    with `environment` added to its own (e.g. `DALI_STALE_AFTER_S="1"`), until the block ends."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DALI_")}
    env.update(
        DALI_DATA_DIR=str(root / "data"),
        DALI_MODELS_DIR=str(root / "models"),
        DALI_POLL_S="0.2",
        DALI_PREVIEW_EVERY="1",
        OMP_NUM_THREADS="1",  # the test machine is shared; one thread is plenty for 64×64
        PYTHONPATH=str(ROOT),
        **environment,
    )
    log = root / "server.log"
    command = [
        sys.executable, "-m", "uvicorn", "--factory", factory,
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with open(log, "ab") as output:  # appended: a restarted server keeps the earlier logs
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=output, stderr=output, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"uvicorn exited:\n{log.read_text()[-3000:]}"
            try:
                if requests.get(url + "/internal/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"uvicorn did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield Server(url, log, Path(sd_core.BUILTIN_MODEL_PATH).exists(), root / "data", process)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
