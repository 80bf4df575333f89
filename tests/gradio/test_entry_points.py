"""Which command serves what, and the line between the service and the UI.

`stable_diffusion_api` (the service) never imports the Gradio UI, directly or through another
module; `python -m stable_diffusion_api` serves the service alone and, with DALI_GRADIO=1,
warns at start-up; `python dali_app.py` (what ./run.sh runs) serves the service with the UI
mounted at /gradio when DALI_GRADIO=1.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.servers import stop

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "stable_diffusion_api"
UI_MODULES = {"gradio", "gradio_client", "dali_gradio", "sd_gradio", "dali_app"}
START_TIMEOUT_S = 120


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-local imports included), and every
    name handed to importlib.import_module / __import__ as a literal."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in {"import_module", "__import__"} and isinstance(first, ast.Constant):
                found.add(str(first.value))
    return found


def test_no_module_of_the_service_imports_the_ui() -> None:
    files = sorted(SERVICE.rglob("*.py"))
    assert len(files) > 20  # the whole package, not an empty glob
    offending = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in UI_MODULES
        )
        for path in files
    }
    assert {k: v for k, v in offending.items() if v} == {}


def test_the_scan_sees_a_ui_import(tmp_path: Path) -> None:
    """The check above would catch a lazy import, a `from` import and an import by name."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import importlib\n"
        "def f():\n    from dali_gradio import mount_gradio\n"
        "def g():\n    import sd_gradio\n"
        "def h():\n    return importlib.import_module('dali_app')\n"
    )
    assert {"dali_gradio", "sd_gradio", "dali_app"} <= imported_modules(sample)


def test_building_the_service_app_with_gradio_on_loads_no_ui(tmp_path: Path) -> None:
    """In a fresh interpreter, with DALI_GRADIO=1: the service's app and its `python -m`
    entry load no module of the UI (nor Gradio itself)."""
    code = (
        "import sys\n"
        "import stable_diffusion_api.__main__ as entry\n"
        "from stable_diffusion_api import sd_api\n"
        "from stable_diffusion_api.config import Settings\n"
        "assert entry.APP == 'stable_diffusion_api.sd_api:app', entry.APP\n"
        "assert sd_api.app.state.studio.settings.gradio\n"
        "sd_api.create_app(Settings(gradio=True))\n"
        f"ui = {sorted(UI_MODULES)!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ui)\n"
        "print('loaded:', loaded)\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "DALI_GRADIO": "1", "DALI_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "loaded: []" in done.stdout


# --------------------------------------------------------------------------- real servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def status_of_or_none(url: str) -> int | None:
    try:
        return status_of(url)
    except OSError:
        return None


@contextmanager
def serving(
    command: list[str], tmp_path: Path, port: int, env_port: int | None = None
) -> Iterator[Path]:
    """Run `command` with DALI_GRADIO=1 on a fresh data directory until the app answers on
    `port`; its combined output's file. DALI_PORT is `env_port` (default: `port`)."""
    env = {
        **os.environ,
        "DALI_GRADIO": "1",
        "DALI_DATA_DIR": str(tmp_path / "data"),
        "DALI_PORT": str(env_port or port),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio-cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while status_of_or_none(f"http://127.0.0.1:{port}/api/v1/projects") != 200:
            if process.poll() is not None:
                pytest.fail(f"{command} exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{command} did not answer in {START_TIMEOUT_S} s:\n{log.read_text()}")
            time.sleep(0.5)
        yield log
    finally:
        stop(process)


@pytest.mark.server
def test_python_m_stable_diffusion_api_serves_the_service_and_warns(tmp_path: Path) -> None:
    port = free_port()
    with serving([sys.executable, "-m", "stable_diffusion_api"], tmp_path, port) as log:
        assert status_of(f"http://127.0.0.1:{port}/gradio/") == 404
        output = log.read_text()
    assert "DALI_GRADIO=1 is set, but the Gradio UI is not served" in output
    assert "uvicorn dali_app:app" in output and "python dali_app.py" in output


@pytest.mark.server
def test_python_dali_app_serves_the_ui_at_gradio(tmp_path: Path) -> None:
    """What ./run.sh runs (its last line: `exec python dali_app.py "$@"`); --port wins over
    DALI_PORT."""
    assert (ROOT / "run.sh").read_text().rstrip().endswith('exec python dali_app.py "$@"')
    port = free_port()
    command = [sys.executable, "dali_app.py", "--port", str(port)]
    with serving(command, tmp_path, port, env_port=free_port()) as log:
        assert status_of(f"http://127.0.0.1:{port}/gradio/") == 200
        assert status_of(f"http://127.0.0.1:{port}/gradio/config") == 200
        output = log.read_text()
    assert "is not served" not in output
