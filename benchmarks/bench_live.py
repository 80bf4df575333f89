"""Live view across hosts over PostgreSQL's LISTEN/NOTIFY: how long a worker node's step report
takes to reach the web host's hub, how long a cancel takes to reach a node, and how big a
preview's payload is at each image size.

A throwaway PostgreSQL (tests/postgres.py: a Unix socket, fsync off) holds one database; a
node — its `NotifyHub` and `NotifySender`, in a process of its own — reports `--steps` steps
`--interval` seconds apart (a 1024² preview every 10th step, as a worker would send one);
the web host's end (`WebLive`) replays them on a hub here, which notes when each arrives. Both
processes read the same clock (time.time()). Cancels go the other way, one at a time, from a
`WebLive` to a `NodeLive` in this process. Not a test: figures go to docs/benchmarks.md.

    python benchmarks/bench_live.py --steps 1000 --interval 0.01 --cancels 200
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stable_diffusion_api.services.live_codec import encode_report  # noqa: E402
from stable_diffusion_api.services.pg_notify import (  # noqa: E402
    WebLive,
    libpq_conninfo,
    node_live,
)
from stable_diffusion_api.services.progress import ProgressHub  # noqa: E402
from stable_diffusion_api.services.worker_messages import JobPreview, JobStepped  # noqa: E402
from tests.postgres import postgres_server, server_binaries  # noqa: E402

NODE = """
import json, sys, time
import numpy as np
from stable_diffusion_api.services.pg_notify import node_live
live = node_live(sys.argv[1])
live.start()
hub, steps, interval = live.hub, int(sys.argv[2]), float(sys.argv[3])
hub.start(1, steps)
time.sleep(0.5)
latent = np.random.default_rng(0).standard_normal((4, 128, 128)).astype(np.float32)
sent = []
for step in range(1, steps + 1):
    sent.append(time.time())
    hub.step(1, step, steps, interval)
    if step % 10 == 0:
        hub.preview_latent(1, latent, step)
    time.sleep(interval)
hub.finish(1, "succeeded")
live.stop()
print(json.dumps({"sent": sent, "dropped": live.sender.dropped}))
"""


class Arrivals(ProgressHub):
    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[int, float] = {}
        self.ended = threading.Event()

    def step(self, generation_id: int, step: int, total: int, step_seconds: float | None) -> None:
        self.steps[step] = time.time()
        super().step(generation_id, step, total, step_seconds)

    def finish(self, generation_id: int, status: str, result: object = None) -> None:
        super().finish(generation_id, status)
        self.ended.set()


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[max(0, int(0.99 * len(ordered)) - 1)]
    return (f"p50 {statistics.median(ordered) * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, "
            f"max {ordered[-1] * 1e3:.1f} ms (n={len(ordered)})")  # fmt: skip


def preview_sizes() -> None:
    for image in (64, 512, 1024, 2048):
        side = image // 8
        latent = np.random.default_rng(0).standard_normal((4, side, side)).astype(np.float32)
        began = time.perf_counter()
        payload = encode_report(JobPreview(123456, latent, 10))
        took = time.perf_counter() - began
        print(f"preview {image}²: {len(payload.encode())} bytes, encoded in {took * 1e3:.2f} ms")
    step = encode_report(JobStepped(123456, 17, 30, 0.123456))
    print(f"step report: {len(step.encode())} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--cancels", type=int, default=200)
    args = parser.parse_args()
    binaries = server_binaries()
    if binaries is None:
        sys.exit("PostgreSQL's server programs (initdb, pg_ctl) are not installed")
    print(f"{platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    preview_sizes()
    with postgres_server(binaries) as server:
        url = server.new_database()
        conninfo = libpq_conninfo(url)
        assert conninfo is not None
        hub = Arrivals()
        web = WebLive(conninfo, hub)
        web.start()
        web.listener.connected.wait(10)
        node = subprocess.run(
            [sys.executable, "-c", NODE, conninfo, str(args.steps), str(args.interval)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        hub.ended.wait(10)
        report = json.loads(node.stdout)
        delays = [hub.steps[s] - report["sent"][s - 1] for s in hub.steps]
        print(f"step → web hub: {percentiles(delays)}; lost {args.steps - len(hub.steps)}")

        live = node_live(url)
        assert live is not None
        heard = threading.Event()
        live.hub.cancel_listeners.append(lambda job_id, keep: heard.set())
        live.start()
        live.listener.connected.wait(10)
        cancels = []
        for job_id in range(args.cancels):
            heard.clear()
            began = time.perf_counter()
            web.cancel(job_id)
            heard.wait(5)
            cancels.append(time.perf_counter() - began)
            time.sleep(0.005)
        print(f"cancel → node: {percentiles(cancels)}")
        live.stop()
        web.stop()


if __name__ == "__main__":
    main()
