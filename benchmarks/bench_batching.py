"""Batching across queued jobs (DALI_BATCH_MAX): throughput with N concurrent clients, one job
at a time against matching jobs run in one denoising loop.

Two measurements, each first one at a time (batch max 1), then batched (`--batch-max`):

  engine   – `--clients` different txt2img jobs (prompts, seeds, guidance) through
             `sd_core.batched.generate_batch` against `pipe.generate` one after another,
             the same model in this process; median of `--repeat` alternating runs. It also
             checks that every image is the same in both (bit for bit on the CPU in float32).
  service  – the studio in this process (its worker a child process as by default, SQLite):
             `--clients` clients (threads) each submit a job over the REST API, read it every
             `--poll` seconds until it has succeeded and submit the next, `--jobs` each; images per second from the first POST to the last
             success, and each job's POST → succeeded time.

    python benchmarks/bench_batching.py                            # CPU, the built-in model
    python benchmarks/bench_batching.py --device cuda --dtype float16 --clients 16 \\
        --batch-max 8 --checkpoint data/models/v1-5-pruned-emaonly.safetensors --size 512

Not a test: timings depend on the machine and its load. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sd_core  # noqa: E402
from sd_core.batched import BatchJob, generate_batch  # noqa: E402
from sd_core.params import GenerationParams  # noqa: E402

COLORS = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle")


def prompt(i: int) -> str:
    background = "gray" if COLORS[i % 8] != "gray" else "white"
    return f"a {COLORS[i % 8]} {SHAPES[i % 3]} on a {background} background"


def job_params(i: int, steps: int, size: int | None) -> GenerationParams:
    return GenerationParams(prompt(i), seed=1000 + i, steps=steps, guidance=5.0 + i % 5,
                            sampler="euler_a", width=size, height=size)  # fmt: skip


def synced(device: torch.device, fn: Callable[[], object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began


def engine(args: argparse.Namespace) -> dict[str, Any]:
    pipe = sd_core.load_pipeline(args.checkpoint, device=args.device, dtype=args.dtype)
    params = [job_params(i, args.steps, args.size) for i in range(args.clients)]
    chunks = [params[i : i + args.batch_max] for i in range(0, len(params), args.batch_max)]
    outcomes: list[Any] = []

    def batched() -> None:
        outcomes.clear()
        for chunk in chunks:
            outcomes.extend(generate_batch(pipe, [BatchJob(p) for p in chunk]))

    singles: list[Any] = []

    def alone() -> None:
        singles[:] = [pipe.generate(p) for p in params]

    batched()  # warm-up (and the check below)
    alone()
    same = all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for one, many in zip(singles, outcomes, strict=True)
        for a, b in zip(one.images, many.images, strict=True)
    )
    times: dict[str, list[float]] = {"alone_s": [], "batched_s": []}
    for _ in range(args.repeat):
        times["alone_s"].append(synced(pipe.device, alone))
        times["batched_s"].append(synced(pipe.device, batched))
    alone_s, batched_s = (statistics.median(v) for v in times.values())
    return {
        "jobs": len(params),
        "alone_s": alone_s,
        "batched_s": batched_s,
        "speedup": alone_s / batched_s,
        "images_equal": same,
    }


def service(args: argparse.Namespace, batch_max: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from stable_diffusion_api.config import Settings
    from stable_diffusion_api.sd_api import create_app

    with tempfile.TemporaryDirectory(prefix="dali-bench-batch-") as tmp:
        models = Path(args.checkpoint).parent if args.checkpoint else None
        settings = Settings(data_dir=Path(tmp) / "data", models_dir=models, batch_max=batch_max,
                            worker_mode=args.worker_mode, poll_s=0.05, queue_limit=1000,
                            torch_threads=args.torch_threads, filmstrip_frames=0,
                            api_key=None, api_auth=None)  # fmt: skip
        with TestClient(create_app(settings)) as client:
            body: dict[str, Any] = {"name": "bench", "device": args.device}
            if args.dtype:
                body["dtype"] = args.dtype
            if args.checkpoint:
                body["default_model"] = Path(args.checkpoint).stem
            project = client.post("/api/v1/projects", json=body).raise_for_status().json()
            url = f"/api/v1/projects/{project['id']}/generations"

            def run_job(i: int) -> float:
                p = job_params(i, args.steps, args.size)
                request = {"prompt": p.prompt, "seed": p.seed, "steps": p.steps,
                           "guidance": p.guidance, "sampler": "Euler a"}  # fmt: skip
                if args.size:
                    request.update(width=args.size, height=args.size)
                began = time.perf_counter()
                job = client.post(url, json=request).raise_for_status().json()
                while True:
                    done = client.get(f"/api/v1/generations/{job['id']}").json()
                    if done["status"] == "succeeded":
                        return time.perf_counter() - began
                    if done["status"] in ("failed", "canceled"):
                        raise RuntimeError(done)
                    time.sleep(args.poll)

            run_job(0)  # warm-up: the model loaded, caches filled
            latencies: list[float] = []
            lock = threading.Lock()

            def one_client(index: int) -> None:
                for k in range(args.jobs):
                    seconds = run_job(index * args.jobs + k)
                    with lock:
                        latencies.append(seconds)

            threads = [threading.Thread(target=one_client, args=(c,)) for c in range(args.clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
    return {
        "batch_max": batch_max,
        "images": len(latencies),
        "wall_s": wall,
        "images_per_s": len(latencies) / wall,
        "latency_median_s": statistics.median(latencies),
        "latency_max_s": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="default: the built-in model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--size", type=int, default=None, help="default: the model's own")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=2, help="jobs per client (service)")
    parser.add_argument("--batch-max", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="engine runs of each")
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--worker-mode", default="process", choices=("process", "thread"))
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between a client's reads")
    parser.add_argument("--parts", default="engine,service")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    figures: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg": os.getloadavg(),
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "args": vars(args),
    }  # fmt: skip
    parts = args.parts.split(",")
    if "engine" in parts:
        figures["engine"] = found = engine(args)
        print(f"engine: {found['jobs']} jobs, one at a time {found['alone_s']:.2f} s, in loops of "
              f"{args.batch_max} {found['batched_s']:.2f} s: {found['speedup']:.2f}x; "
              f"images equal: {found['images_equal']}")  # fmt: skip
    if "service" in parts:
        one, many = service(args, 1), service(args, args.batch_max)
        figures["service"] = {"one_at_a_time": one, "batched": many,
                              "speedup": many["images_per_s"] / one["images_per_s"]}  # fmt: skip
        for name, run in (("one at a time", one), (f"batch max {args.batch_max}", many)):
            print(f"service, {args.clients} clients, {name}: {run['images_per_s']:.2f} images/s, "
                  f"latency median {run['latency_median_s']:.2f} s, max "
                  f"{run['latency_max_s']:.2f} s")  # fmt: skip
        print(f"service speed-up: {figures['service']['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
