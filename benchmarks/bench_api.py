"""What the web service costs on top of the engine, and how its read endpoints hold up under load.

Two measurements against a real uvicorn process on loopback (same machine, same model):

  overhead  – per image: POST a generation, follow it until it has succeeded (HTTP + SQLite
              queue + worker hand-off + PNG and thumbnail writing + DB rows), versus the same
              `pipe.generate()` called directly in this process (same model, seed, steps, thread
              count). Runs alternate between the two so machine load hits both alike; medians.
  readers   – N concurrent clients on loopback read the API (project, generation, gallery page,
              hardware, models, a thumbnail, the project list) for D seconds while generations
              run back to back; latency percentiles per endpoint and overall.

    python benchmarks/bench_api.py                      # built-in model, else a random tiny one
    python benchmarks/bench_api.py --runs 10 --clients 50 --duration 20 --torch-threads 1
    python benchmarks/bench_api.py --checkpoint path/to/model.safetensors --json out.json

Not a test: timings depend on the machine and its load. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "a red circle in the top left on a blue background"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare_model(data: Path, checkpoint: str | None) -> tuple[Path, str | None]:
    """(checkpoint path, model name for the API or None for the built-in)."""
    import sd_core

    if checkpoint:
        path = Path(checkpoint).resolve()
        (data / "models").mkdir(parents=True, exist_ok=True)
        link = data / "models" / path.name
        link.symlink_to(path)
        return path, path.stem
    if Path(sd_core.BUILTIN_MODEL_PATH).is_file():
        return Path(sd_core.BUILTIN_MODEL_PATH), None
    from sd_core.checkpoint import save_checkpoint
    from sd_core.config import TINY_TEST
    from tests.reference import random_checkpoint

    path = data / "models" / "tiny-random.safetensors"
    save_checkpoint(path, random_checkpoint(TINY_TEST), TINY_TEST)
    return path, "tiny-random"


def start_server(data: Path, torch_threads: int | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = os.environ | {"DALI_DATA_DIR": str(data), "DALI_QUEUE_LIMIT": "1000"}
    if torch_threads:
        env["DALI_TORCH_THREADS"] = str(torch_threads)
    data.mkdir(parents=True, exist_ok=True)  # the built-in model needs no models folder in it
    log = (data / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stable_diffusion_api.sd_api:app", "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"uvicorn did not start:\n{(data / 'uvicorn.log').read_text()}")
        time.sleep(0.2)


def generate_over_http(
    client: httpx.Client, project: int, steps: int, seed: int
) -> tuple[float, dict[str, Any]]:
    """Seconds from POST to the `done` event of the generation's event stream (as a browser
    sees it; polling instead would load the server it measures), and the finished job."""
    start = time.perf_counter()
    response = client.post(
        f"/api/v1/projects/{project}/generations",
        json={"prompt": PROMPT, "steps": steps, "seed": seed},
    )
    response.raise_for_status()
    with client.stream("GET", response.json()["events_url"]) as events:
        done = False
        for line in events.iter_lines():
            if line == "event: done":
                done = True
            elif done and line.startswith("data: "):
                body = json.loads(line[6:])
                if body["status"] != "succeeded":
                    raise SystemExit(f"generation {body['status']}: {body['error']}")
                return time.perf_counter() - start, body
    raise SystemExit("the event stream ended without `done`")


def overhead(
    base: str, project: int, checkpoint: Path, steps: int, runs: int, threads: int | None
) -> dict[str, Any]:
    import torch

    import sd_core

    if threads:
        torch.set_num_threads(threads)
    pipe = sd_core.load_pipeline(checkpoint)
    direct: list[float] = []
    served: list[float] = []
    waited: list[float] = []  # server side: created → started (queue and hand-off)
    ran: list[float] = []  # server side: started → finished (sampling, PNG, thumbnail, rows)
    with httpx.Client(base_url=base, timeout=600) as client:
        generate_over_http(client, project, steps, 0)  # warm-up: the server loads the model
        pipe.generate(PROMPT, seed=0, steps=steps)  # warm-up here too
        for run in range(runs):
            start = time.perf_counter()
            pipe.generate(PROMPT, seed=run, steps=steps)
            direct.append(time.perf_counter() - start)
            seconds, job = generate_over_http(client, project, steps, run)
            served.append(seconds)
            created, started, finished = (
                dt.datetime.fromisoformat(job[key]).timestamp()
                for key in ("created_at", "started_at", "finished_at")
            )
            waited.append(started - created)
            ran.append(finished - started)
    engine, api = statistics.median(direct), statistics.median(served)
    return {
        "steps": steps,
        "runs": runs,
        "engine_s": engine,
        "api_s": api,
        "overhead_s": api - engine,
        "overhead_pct": 100 * (api - engine) / engine,
        "server_queue_s": statistics.median(waited),
        "server_run_s": statistics.median(ran),
        "engine_all_s": direct,
        "api_all_s": served,
    }


async def readers(
    base: str,
    project: int,
    clients: int,
    duration: float,
    interval: float,
    steps: int,
    generate: bool = True,
) -> dict[str, Any]:
    """Latency of read endpoints (while generations run back to back, with `generate`)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as setup:
        first = (await setup.post(f"/api/v1/projects/{project}/generations",
                                  json={"prompt": PROMPT, "steps": steps})).json()  # fmt: skip
        image = (await setup.get(f"/api/v1/projects/{project}/images")).json()["items"][0]["id"]
    endpoints = {
        "health": "/api/v1/health",  # the floor: no database, no thread pool
        "project": f"/api/v1/projects/{project}",
        "projects": "/api/v1/projects",
        "generation": f"/api/v1/generations/{first['id']}",
        "gallery": f"/api/v1/projects/{project}/images?limit=24",
        "generations": f"/api/v1/projects/{project}/generations?limit=10",
        "hardware": "/api/v1/hardware",
        "models": "/api/v1/models",
        "thumbnail": f"/api/v1/images/{image}/thumbnail",
    }
    names = list(endpoints)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors = 0
    stop = time.monotonic() + duration
    busy = {"generations": 0, "running_samples": 0, "samples": 0}

    async def keep_generating(client: httpx.AsyncClient) -> None:
        # Keep one job queued behind the running one, so the worker never idles.
        while time.monotonic() < stop:
            queued = (await client.get(f"/api/v1/projects/{project}/generations",
                                       params={"status": "queued"})).json()["total"]  # fmt: skip
            if queued < 1:
                await client.post(f"/api/v1/projects/{project}/generations",
                                  json={"prompt": PROMPT, "steps": steps})  # fmt: skip
                busy["generations"] += 1
            running = (await client.get(f"/api/v1/projects/{project}/generations",
                                        params={"status": "running"})).json()["total"]  # fmt: skip
            busy["samples"] += 1
            busy["running_samples"] += running > 0
            await asyncio.sleep(0.05)

    async def reader(index: int, client: httpx.AsyncClient) -> None:
        nonlocal errors
        turn = index
        jitter = random.Random(index)
        if interval:  # independent clients: not all at the same instant
            await asyncio.sleep(jitter.uniform(0, interval))
        while time.monotonic() < stop:
            name = names[turn % len(names)]
            turn += 1
            start = time.perf_counter()
            try:
                response = await client.get(endpoints[name])
            except httpx.TransportError:  # e.g. a keep-alive connection closed under us
                errors += 1
                continue
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                errors += 1
            latencies[name].append(elapsed)
            if interval:
                await asyncio.sleep(interval * jitter.uniform(0.5, 1.5))

    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        background = [keep_generating(client)] if generate else []
        await asyncio.gather(*background, *(reader(i, client) for i in range(clients)))

    def percentiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"n": len(ordered), "p50_ms": 1000 * pick(0.50), "p95_ms": 1000 * pick(0.95),
                "p99_ms": 1000 * pick(0.99), "max_ms": 1000 * ordered[-1]}  # fmt: skip

    every = [value for values in latencies.values() for value in values]
    return {
        "clients": clients,
        "duration_s": duration,
        "interval_s": interval,
        "errors": errors,
        "requests_per_s": len(every) / duration,
        "generation_running_fraction": busy["running_samples"] / max(1, busy["samples"]),
        "overall": percentiles(every),
        "endpoints": {name: percentiles(values) for name, values in latencies.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint (default: built-in, else random tiny)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--interval", type=float, default=0.0,
                        help="mean pause between one client's requests, jittered ±50 %% "
                             "(0: back to back)")  # fmt: skip
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dali-bench-") as tmp:
        data = Path(tmp) / "data"
        checkpoint, model = prepare_model(data, args.checkpoint)
        process, base = start_server(data, args.torch_threads)
        try:
            body: dict[str, Any] = {"name": "bench", "device": "cpu"}
            if model:
                body["default_model"] = model
            project = httpx.post(f"{base}/api/v1/projects", json=body).raise_for_status().json()
            cost = overhead(base, project["id"], checkpoint, args.steps, args.runs,
                            args.torch_threads)  # fmt: skip
            idle = asyncio.run(readers(base, project["id"], args.clients, args.duration,
                                       args.interval, args.steps, generate=False))  # fmt: skip
            load = asyncio.run(readers(base, project["id"], args.clients, args.duration,
                                       args.interval, args.steps))  # fmt: skip
        finally:
            process.terminate()
            process.wait(30)
    figures = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
        },  # fmt: skip
        "model": model or "dali-tiny (built-in)",
        "torch_threads": args.torch_threads,
        "overhead": cost,
        "readers_idle": idle,
        "readers": load,
    }
    print(f"model {figures['model']}, {args.steps} steps, torch threads {args.torch_threads}")
    print(f"per image: engine {cost['engine_s']:.3f} s, via API {cost['api_s']:.3f} s, "
          f"overhead {cost['overhead_s'] * 1000:.0f} ms = {cost['overhead_pct']:.1f} %")  # fmt: skip
    print(f"  server side: queued → started {cost['server_queue_s'] * 1000:.0f} ms, "
          f"started → succeeded {cost['server_run_s'] * 1000:.0f} ms")  # fmt: skip
    for title, result in (("no generation", idle), ("while generating", load)):
        print(f"{result['clients']} readers, {title}, {result['duration_s']:.0f} s "
              f"({result['requests_per_s']:.0f} req/s, {result['errors']} errors, a generation "
              f"running {100 * result['generation_running_fraction']:.0f} % of the time):")  # fmt: skip
        for name, p in {"overall": result["overall"], **result["endpoints"]}.items():
            print(f"  {name:12s} n={p['n']:6d}  p50 {p['p50_ms']:6.1f} ms  p95 {p['p95_ms']:6.1f}"
                  f" ms  p99 {p['p99_ms']:6.1f} ms  max {p['max_ms']:6.1f} ms")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
