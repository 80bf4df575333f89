"""Scale-out end to end (issue 20): a web host without workers and two worker nodes, real
processes on one throwaway PostgreSQL database and one S3 bucket (moto's server), the built-in
model.

The web host (`DALI_RUN_WORKERS=false python -m stable_diffusion_api`) queues; two
`python -m stable_diffusion_api worker` processes, each with its own data folder (no shared
disk) and DALI_NODE_NAME, run the jobs and write the images to the bucket. Checked: the jobs
spread over both nodes; every image downloads from the web host, its objects are in the bucket
and no image file is in any data folder; a remote job's progress reaches the web host's event
stream live and its cancel stops it; an A1111 client's txt2img and the Gradio UI's (its own web
host); kill -9 of a node mid-job, a taken name, a web host restart, SIGTERM.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage

from tests.postgres import PostgresServer
from tests.s3 import S3Server
from tests.servers import ROOT, free_port, stop

pytestmark = [pytest.mark.server, pytest.mark.postgres]

BUILTIN = ROOT / "data" / "models" / "dali-tiny.safetensors"
FAST = {"DALI_POLL_S": "0.2", "DALI_HEARTBEAT_S": "0.5", "DALI_STALE_AFTER_S": "3",
        "DALI_FILMSTRIP_FRAMES": "0", "DALI_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1"}  # fmt: skip
JOB = {"prompt": "a red circle in the center on a blue background", "steps": 3,
       "width": 64, "height": 64, "seed": 1}  # fmt: skip


def environment(database: str, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_")}
    return env | FAST | {"DALI_DATABASE_URL": database, "DALI_DATA_DIR": str(data)} | extra


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "stable_diffusion_api", *args], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def node_data(tmp_path: Path, name: str) -> Path:
    """A node's own data folder, holding the built-in model (a link to the repository's)."""
    models = tmp_path / name / "models"
    models.mkdir(parents=True)
    (models / BUILTIN.name).symlink_to(BUILTIN)
    return tmp_path / name


def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def cluster(postgres: PostgresServer, s3: S3Server, tmp_path: Path) -> Iterator[dict[str, Any]]:
    database = postgres.new_database()
    bucket = s3.new_bucket()
    store = s3.environment(bucket, "studio")
    port = free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    web_env = environment(database, tmp_path / "web", DALI_RUN_WORKERS="false",
                          DALI_PORT=str(port), DALI_NODE_NAME="web", **store)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def start_web() -> None:
            """Start (or start again) the web host; back once it answers."""
            processes["web"] = start([], web_env, tmp_path / "web.log")

            def web_up() -> bool:
                assert processes["web"].poll() is None, (tmp_path / "web.log").read_text()
                try:
                    return httpx.get(f"{url}/api/v1/health", timeout=5).status_code == 200
                except httpx.HTTPError:
                    return False

            until(web_up, 60, "the web host")

        start_web()  # it ran the migrations: the nodes need not race for them
        # The Gradio UI as a web host of its own (no workers), on the same database and store.
        gradio_port = free_port()
        gradio_env = web_env | {"GRADIO_SERVER_PORT": str(gradio_port), "DALI_NODE_NAME": "ui",
                                "GRADIO_TEMP_DIR": str(tmp_path / "gradio-cache"),
                                "GRADIO_ANALYTICS_ENABLED": "False"}  # fmt: skip
        with (tmp_path / "gradio.log").open("wb") as out:
            processes["gradio"] = subprocess.Popen(
                [sys.executable, str(ROOT / "sd_gradio.py"), "--project", "gradio"], cwd=ROOT,
                env=gradio_env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        for name in ("node-a", "node-b"):
            env = environment(database, node_data(tmp_path, name), DALI_NODE_NAME=name, **store)
            processes[name] = start(["worker"], env, tmp_path / f"{name}.log")
        yield {"url": url, "database": database, "processes": processes, "store": store,
               "gradio": f"http://127.0.0.1:{gradio_port}/",
               "keys": lambda: s3.keys(bucket), "restart_web":
               lambda: (stop(processes["web"]), start_web())}  # fmt: skip
    finally:
        for process in processes.values():
            if process.poll() is None:
                stop(process)


def test_two_nodes_share_the_work_and_a_killed_node_is_reported(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    url, processes = cluster["url"], cluster["processes"]
    client = httpx.Client(base_url=url, timeout=10)

    def nodes_listed() -> set[str]:
        return {d["node"] for d in client.get("/api/v1/hardware").json()}

    # Both nodes register; the web host has no device of its own.
    until(lambda: nodes_listed() == {"node-a", "node-b"}, 40, "both nodes to register")
    devices = client.get("/api/v1/hardware").json()
    assert {d["id"] for d in devices} == {"node-a/cpu", "node-b/cpu"}

    # A second node under a taken name is refused at start (checked below, while jobs run).
    env = environment(cluster["database"], node_data(tmp_path, "twin"), DALI_NODE_NAME="node-a",
                      **cluster["store"])  # fmt: skip
    twin = subprocess.Popen([sys.executable, "-m", "stable_diffusion_api", "worker"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip

    project = client.post("/api/v1/projects", json={"name": "nodes", "device": "cpu"}).json()
    jobs = f"/api/v1/projects/{project['id']}/generations"
    ids = [client.post(jobs, json=JOB | {"seed": seed}).json()["id"] for seed in range(4)]

    def finished(job_id: int) -> dict[str, Any] | None:
        view = client.get(f"/api/v1/generations/{job_id}").json()
        return view if view["status"] not in ("queued", "running") else None

    done = [until(lambda i=i: finished(i), 60, f"job {i}") for i in ids]
    assert {view["status"] for view in done} == {"succeeded"}, done
    assert {view["node"] for view in done} == {"node-a", "node-b"}  # spread over both
    # Every image downloads from the web host, out of the bucket, its `dali` chunk naming the
    # node that made it; the bucket holds them, no data folder does.
    keys = cluster["keys"]()
    for view in done:
        [image] = view["images"]
        file = client.get(f"/api/v1/images/{image['id']}/file")
        assert file.status_code == 200 and file.headers["content-type"] == "image/png"
        with PILImage.open(io.BytesIO(file.content)) as png:
            assert json.loads(png.info["dali"])["node"] == view["node"]
        assert f"studio/images/{project['id']}/{view['id']}-0.png" in keys
        assert image["parameters"].endswith(f", Node: {view['node']}")  # the infotext too
    assert [p for p in tmp_path.rglob("*.png")] == []

    # A remote job, live: its progress reaches the web host's event stream as it runs, and
    # its cancel reaches its node within a few steps (NOTIFY both ways).
    slow = client.post(jobs, json=JOB | {"steps": 150, "width": 128, "height": 128}).json()
    steps: list[int] = []
    seen: list[str] = []  # for the message, should it fail
    with client.stream("GET", f"/api/v1/generations/{slow['id']}/events", timeout=60) as events:
        for line in events.iter_lines():
            seen.append(line)
            if line.startswith("data:") and '"step"' in line:
                steps.append(json.loads(line[5:])["step"])
            if len(steps) >= 3:
                break
    assert steps == sorted(steps) and steps and steps[-1] > 0, [x[:300] for x in seen[-4:]]
    asked = time.monotonic()
    assert client.post(f"/api/v1/generations/{slow['id']}/cancel").status_code == 200
    canceled = until(lambda: finished(slow["id"]), 20, "the remote job to stop")
    assert canceled["status"] == "canceled" and time.monotonic() - asked < 10

    # An AUTOMATIC1111 client, unchanged: txt2img on the web host waits for a node's job and
    # answers with its PNG (read from the bucket).
    a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": JOB["prompt"], "steps": 3,
                                                   "width": 64, "height": 64}, timeout=60)  # fmt: skip
    assert a1111.status_code == 200, a1111.text
    with PILImage.open(io.BytesIO(base64.b64decode(a1111.json()["images"][0]))) as png:
        assert json.loads(png.info["dali"])["node"] in ("node-a", "node-b")

    # The Gradio UI, unchanged, on a studio whose work runs on the nodes.
    from gradio_client import Client

    def gradio_up() -> bool:
        assert processes["gradio"].poll() is None, (tmp_path / "gradio.log").read_text()
        try:
            return httpx.get(cluster["gradio"], timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    until(gradio_up, 90, "the Gradio UI")
    ui = Client(cluster["gradio"], verbose=False, download_files=str(tmp_path / "downloads"))
    # With several nodes its hardware choices are `node/device` ids (hardware.choices()).
    args = ("gradio", "", "node-a/cpu", "auto", JOB["prompt"], "", "euler", 3, 7.0, 1, 64, 64, 1,
            1, "")  # fmt: skip
    *_, details = ui.predict(*args, api_name="/txt2img")
    assert (details["status"], details["node"]) == ("succeeded", "node-a"), details

    said, _ = twin.communicate(timeout=30)
    assert twin.returncode == 3 and b"DALI_NODE_NAME='node-a' is already used" in said, said

    # A long job pinned to node-b, and one queued behind it there; work for any CPU too.
    long_job = client.post(jobs, json=JOB | {"steps": 150, "device": "node-b/cpu"}).json()
    behind = client.post(jobs, json=JOB | {"device": "node-b/cpu"}).json()
    until(lambda: client.get(f"/api/v1/generations/{long_job['id']}").json()["status"]
          == "running", 30, "node-b to start the long job")  # fmt: skip
    os.kill(processes["node-b"].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    anywhere = [client.post(jobs, json=JOB | {"seed": 50 + n}).json()["id"] for n in range(2)]

    failed = until(lambda: finished(long_job["id"]), 10, "the killed node's job to fail")
    assert time.monotonic() - killed_at < 3 + 2  # within the stale window (and a beat)
    assert failed["status"] == "failed" and failed["failure_kind"] == "interrupted"
    assert "node-b" in failed["error"] and failed["node"] == "node-b"
    # Its node is gone from the listing; work any node may run goes to node-a.
    until(lambda: nodes_listed() == {"node-a"}, 10, "node-b to leave the listing")
    for job_id in anywhere:
        view = until(lambda j=job_id: finished(j), 30, f"job {job_id}")
        assert (view["status"], view["node"]) == ("succeeded", "node-a")
    # The job only node-b may run waits, saying why.
    waiting = client.get(f"/api/v1/generations/{behind['id']}").json()
    assert waiting["status"] == "queued" and "node-b is not live" in waiting["waiting_reason"]

    # The web host restarts: no job lost, none failed by it, the waiting one still waits.
    listed = client.get(jobs).json()
    cluster["restart_web"]()
    assert client.get(jobs).json() == listed
    waiting = client.get(f"/api/v1/generations/{behind['id']}").json()
    assert waiting["status"] == "queued" and "node-b is not live" in waiting["waiting_reason"]
    assert nodes_listed() == {"node-a"}

    # SIGTERM stops node-a cleanly.
    processes["node-a"].send_signal(signal.SIGTERM)
    assert processes["node-a"].wait(30) == 0
    until(lambda: nodes_listed() == set(), 10, "node-a to leave the listing")
