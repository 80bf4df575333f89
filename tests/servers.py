"""Real server processes for the tests: `serving` starts a script (`python dali_app.py`,
`python sd_gradio.py`) on a free port and stops it on the way out."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ask a server process to stop; kill it if it has not within 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(script: str, port: int, env: dict[str, str], log: Path, ready: str) -> Iterator[str]:
    """`python <script> --port <port>` with `env`, its output in `log`; its URL once `ready`
    answers (any response but a 5xx); stopped on the way out."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, script, "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"{script} exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}{ready}", timeout=5).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{script} did not answer in {START_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)
