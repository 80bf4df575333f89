"""What the web service costs on top of the engine, and how its read endpoints hold up under load.

Two measurements against a real uvicorn process on loopback (same machine, same model):

  overhead  – per image: POST a generation, follow it until it has succeeded (HTTP + SQLite
              queue + worker hand-off + PNG and thumbnail writing + DB rows), versus the same
              `pipe.generate()` called directly in this process (same model, seed, steps, thread
              count; both pinned to the same CPU with --pin). Runs alternate between the two;
              medians. The headline figure is steadier: each run's POST → `done` time minus
              that run's engine time as the worker measured it (`timings.engine_s`), with where
              the difference went.
  readers   – N concurrent clients on loopback read the API (project, generation, gallery page,
              hardware, models, a thumbnail, the project list) for D seconds, idle and then
              while generations (queued up front) run back to back; latency percentiles per
              endpoint and overall.

    python benchmarks/bench_api.py                      # built-in model, else a random tiny one
    python benchmarks/bench_api.py --runs 10 --clients 50 --duration 20 --torch-threads 1
    python benchmarks/bench_api.py --checkpoint path/to/model.safetensors --json out.json

Not a test: timings depend on the machine and its load. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import math
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


def worker_pids(server_pid: int) -> list[int]:
    """The server's device-worker processes (multiprocessing "spawn" children)."""
    found = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` onto `cpus`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def generate_over_http(
    client: httpx.Client, project: int, steps: int, seed: int
) -> tuple[float, dict[str, Any], float, float]:
    """Seconds from POST to the `done` event of the generation's event stream (as a browser
    sees it; polling instead would load the server it measures), the finished job, and the
    wall-clock times the POST was sent and `done` was read (to set against the job's own)."""
    posted = time.time()
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
                return time.perf_counter() - start, body, posted, time.time()
    raise SystemExit("the event stream ended without `done`")


def overhead(
    base: str,
    project: int,
    checkpoint: Path,
    steps: int,
    runs: int,
    threads: int | None,
    sampling_cpus: set[int] | None,
) -> dict[str, Any]:
    """With `sampling_cpus`, this process samples its direct runs there, where the server's
    worker samples too (pinned by the caller); it waits for served runs elsewhere."""
    import torch

    import sd_core

    if threads:
        torch.set_num_threads(threads)
    other_cpus = os.sched_getaffinity(0) - (sampling_cpus or set()) or os.sched_getaffinity(0)
    pipe = sd_core.load_pipeline(checkpoint)
    direct: list[float] = []
    served: list[float] = []
    waited: list[float] = []  # server side: created → started (queue and hand-off)
    ran: list[float] = []  # server side: started → finished (sampling, PNG, thumbnail, rows)
    spent: list[dict[str, float]] = []  # the worker's own account (GenerationOut.timings)
    submitting: list[float] = []  # client: POST sent → server: row created
    delivering: list[float] = []  # server: row finished → client: `done` read
    with httpx.Client(base_url=base, timeout=600) as client:
        generate_over_http(client, project, steps, 0)  # warm-up: the server loads the model
        pipe.generate(sd_core.GenerationParams(PROMPT, seed=0, steps=steps))  # warm-up here too
        for run in range(runs):
            if sampling_cpus:
                os.sched_setaffinity(0, sampling_cpus)
            start = time.perf_counter()
            pipe.generate(sd_core.GenerationParams(PROMPT, seed=run, steps=steps))
            direct.append(time.perf_counter() - start)
            if sampling_cpus:
                os.sched_setaffinity(0, other_cpus)
            seconds, job, posted, seen = generate_over_http(client, project, steps, run)
            served.append(seconds)
            created, started, finished = (
                dt.datetime.fromisoformat(job[key]).timestamp()
                for key in ("created_at", "started_at", "finished_at")
            )
            submitting.append(created - posted)
            delivering.append(seen - finished)
            waited.append(started - created)
            ran.append(finished - started)
            spent.append(job["timings"])
    engine, api = statistics.median(direct), statistics.median(served)
    paired = [b - a for a, b in zip(direct, served, strict=True)]
    # The same run's engine time, measured by the worker: what the service added to it, free of
    # the run-to-run noise of this machine (which moves a direct run by ±15 %).
    engine_in_worker = [t["engine_s"] for t in spent]
    added = [total - t["engine_s"] for total, t in zip(served, spent, strict=True)]
    parts = {
        "reporting_s": [t["reporting_s"] for t in spent],
        "saving_s": [t["saving_s"] for t in spent],
        "worker_rest_s": [
            r - t["engine_s"] - t["reporting_s"] - t["saving_s"]
            for r, t in zip(ran, spent, strict=True)
        ],  # fmt: skip
        "outside_worker_s": [total - r for total, r in zip(served, ran, strict=True)],
        "of_which_submitting_s": submitting,
        "of_which_queue_s": waited,
        "of_which_delivering_s": delivering,
    }
    return {
        "added_s": statistics.median(added),
        "added_pct": 100 * statistics.median(added) / statistics.median(engine_in_worker),
        "added_ci95_s": median_interval(added),
        "engine_in_worker_s": statistics.median(engine_in_worker),
        "added_parts_s": {name: statistics.median(values) for name, values in parts.items()},
        "pinned_sampling_cpus": sorted(sampling_cpus) if sampling_cpus else None,
        "paired_overhead_s": statistics.median(paired),
        "paired_overhead_pct": 100 * statistics.median(paired) / engine,
        "paired_overhead_ci95_s": median_interval(paired),
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


def median_interval(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap 95 % interval for the median of `values`."""
    rng = random.Random(0)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples)]


async def readers(
    base: str,
    project: int,
    clients: int,
    duration: float,
    interval: float,
    steps: int,
    job_seconds: float,
    generate: bool = True,
) -> dict[str, Any]:
    """Latency of read endpoints (while generations run back to back, with `generate`: one
    takes about `job_seconds`)."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as setup:
        # A finished generation (of the overhead runs) and its image: no job runs unless asked.
        first = (await setup.get(f"/api/v1/projects/{project}/generations",
                                 params={"limit": 1})).json()["items"][0]  # fmt: skip
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
    stop = 0.0  # set when the readers start

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

    # The generations are queued up front, enough to keep the worker busy the whole time, so
    # that keeping it busy adds no requests of its own to the load being measured.
    queued: list[int] = []
    if generate:
        async with httpx.AsyncClient(base_url=base, timeout=60) as setup:
            for _ in range(math.ceil(duration / job_seconds) + 2):
                response = await setup.post(f"/api/v1/projects/{project}/generations",
                                            json={"prompt": PROMPT, "steps": steps})  # fmt: skip
                queued.append(response.raise_for_status().json()["id"])
    window = (time.time(), time.time() + duration)
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    # This process holds torch and a model (for the direct runs): a full pass of its garbage
    # collector takes ~300 ms, which the clients would then report as server latency.
    gc.collect()
    gc.disable()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            await asyncio.gather(*(reader(i, client) for i in range(clients)))
    finally:
        gc.enable()
    busy = 0.0
    async with httpx.AsyncClient(base_url=base, timeout=60) as setup:
        for job in queued:  # what is left is canceled; the overlap of runs with the window kept
            await setup.post(f"/api/v1/generations/{job}/cancel")
        for job in queued:
            body = (await setup.get(f"/api/v1/generations/{job}")).json()
            while body["status"] in ("queued", "running"):
                await asyncio.sleep(0.2)
                body = (await setup.get(f"/api/v1/generations/{job}")).json()
            if body["started_at"] and body["finished_at"]:
                started, finished = (dt.datetime.fromisoformat(body[key]).timestamp()
                                     for key in ("started_at", "finished_at"))  # fmt: skip
                busy += max(0.0, min(finished, window[1]) - max(started, window[0]))

    def percentiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values) or [float("nan")]
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
        "generation_running_fraction": busy / duration,
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
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="overhead runs: sample on the same CPUs directly and in the "
                             "server's worker, the server elsewhere (default: on)")  # fmt: skip
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
            every_cpu = os.sched_getaffinity(0)
            sampling_cpus = None
            if args.pin and len(every_cpu) > (args.torch_threads or 1):
                sampling_cpus = set(sorted(every_cpu)[-(args.torch_threads or 1) :])
                pin(process.pid, every_cpu - sampling_cpus)
                for worker in worker_pids(process.pid):
                    pin(worker, sampling_cpus)
            cost = overhead(base, project["id"], checkpoint, args.steps, args.runs,
                            args.torch_threads, sampling_cpus)  # fmt: skip
            os.sched_setaffinity(0, every_cpu)
            for pid in (process.pid, *worker_pids(process.pid)):  # the read tests run unpinned
                pin(pid, every_cpu)
            job_seconds = cost["api_s"]
            idle = asyncio.run(readers(base, project["id"], args.clients, args.duration,
                                       args.interval, args.steps, job_seconds, generate=False))  # fmt: skip
            load = asyncio.run(readers(base, project["id"], args.clients, args.duration,
                                       args.interval, args.steps, job_seconds))  # fmt: skip
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
    low, high = cost["added_ci95_s"]
    print(
        f"  added to the engine's time in the same run (worker's engine_s "
        f"{cost['engine_in_worker_s']:.3f} s): {cost['added_s'] * 1000:.1f} ms = "
        f"{cost['added_pct']:.1f} % (95 % interval {low * 1000:.1f} to {high * 1000:.1f} ms); "
        + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in cost["added_parts_s"].items())
    )
    low, high = cost["paired_overhead_ci95_s"]
    print(
        f"  paired (served − direct, same seed) median {cost['paired_overhead_s'] * 1000:.0f} ms"
        f" = {cost['paired_overhead_pct']:.1f} %, 95 % interval {low * 1000:.0f} to "
        f"{high * 1000:.0f} ms; sampling pinned to CPUs {cost['pinned_sampling_cpus']}"
    )
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
