"""The studio on a busy machine: how fast the user's own job runs, and how fast pages answer.

Other CPU-bound work runs beside the studio (`--burners` processes spinning at normal
priority, default: one per CPU, i.e. every core wanted by someone else). Under that load, for
each worker setting given (`--configs`: DALI_WORKER_PRIORITY and DALI_TORCH_THREADS), it
measures:

  direct  – the same image made by `sd_core` in a fresh process at normal priority with torch's
            default threads (what `python -m sd_core generate` does), sampling time only;
  web     – POST → `done` over the real server (uvicorn, SQLite queue, worker process), and the
            worker's own engine time for it;
  reads   – N clients reading the API while that job runs: p50/p99.

The target (issue 16): the web job within 1.5× of the direct one under the same load, and reads
with p99 ≤ 100 ms. Not a test: figures go to docs/benchmarks.md.

    python benchmarks/bench_busy.py                           # every config, one burner per CPU
    python benchmarks/bench_busy.py --configs low:auto idle:auto --runs 3 --json busy.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import PROMPT, generate_over_http, prepare_model, readers, start_server  # noqa: E402

DIRECT = """
import sys, time, sd_core
pipe = sd_core.load_pipeline(sys.argv[1] if sys.argv[1] != "-" else None)
params = lambda seed: sd_core.GenerationParams({prompt!r}, seed=seed, steps={steps})
pipe.generate(params(0))  # warm-up
times = []
for seed in range({runs}):
    start = time.perf_counter()
    pipe.generate(params(seed))
    times.append(time.perf_counter() - start)
print(" ".join(map(str, times)))
"""


def burn() -> None:
    while True:
        pass


def direct_seconds(checkpoint: Path | None, steps: int, runs: int) -> list[float]:
    """Sampling seconds of `runs` images made by sd_core in a fresh normal-priority process."""
    code = DIRECT.format(prompt=PROMPT, steps=steps, runs=runs)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    }
    done = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint) if checkpoint else "-"],
        capture_output=True, text=True, check=True, env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    return [float(value) for value in done.stdout.split()]


def web_run(
    data: Path, model: str | None, priority: str, threads: str, steps: int, runs: int, clients: int
) -> dict[str, Any]:
    """Start the server with this worker setting, time `runs` jobs, then reads during one."""
    env = {"DALI_WORKER_PRIORITY": priority}
    if threads != "auto":
        env["DALI_TORCH_THREADS"] = threads
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.pop(key, None)  # the server sizes its own threads
    os.environ.update(env)
    try:
        process, base = start_server(data, None)
    finally:
        for key in env:
            os.environ.pop(key, None)
    try:
        body: dict[str, Any] = {"name": f"busy-{priority}-{threads}", "device": "cpu"}
        if model:
            body["default_model"] = model
        project = httpx.post(f"{base}/api/v1/projects", json=body).raise_for_status().json()
        served, engine = [], []
        with httpx.Client(base_url=base, timeout=1800) as client:
            generate_over_http(client, project["id"], steps, 0)  # warm-up: the model loads
            for run in range(runs):
                seconds, job, _, _ = generate_over_http(client, project["id"], steps, run)
                served.append(seconds)
                engine.append(job["timings"]["engine_s"])
        job_s = statistics.median(served)
        reads = asyncio.run(
            readers(base, project["id"], clients, max(5.0, job_s), 0.05, steps, job_s)
        )
    finally:
        process.terminate()
        process.wait(60)
    return {"web_s": served, "engine_s": engine, "reads": reads["overall"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="a checkpoint (default: built-in, else random tiny)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["idle:auto", "low:auto", "normal:auto", "low:1"],
        help="PRIORITY:THREADS pairs (THREADS auto: the studio's default)",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.burners)]
    figures: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "burners": args.burners,
        "steps": args.steps,
        "configs": {},
    }
    with tempfile.TemporaryDirectory(prefix="dali-busy-") as tmp:
        data = Path(tmp) / "data"
        checkpoint, model = prepare_model(data, args.checkpoint)
        builtin = model is None
        for burner in burners:
            burner.start()
        time.sleep(1)
        try:
            direct = direct_seconds(None if builtin else checkpoint, args.steps, args.runs)
            figures["direct_s"] = direct
            print(f"{args.burners} burners; direct (CLI-like) {statistics.median(direct):.2f} s")
            for config in args.configs:
                priority, threads = config.split(":")
                result = web_run(data, model, priority, threads, args.steps, args.runs,
                                 args.clients)  # fmt: skip
                ratio = statistics.median(result["web_s"]) / statistics.median(direct)
                result["web_over_direct"] = ratio
                figures["configs"][config] = result
                print(
                    f"  {config:12s} web {statistics.median(result['web_s']):6.2f} s "
                    f"(engine {statistics.median(result['engine_s']):6.2f} s) = {ratio:4.2f}× "
                    f"direct; reads p50 {result['reads']['p50_ms']:.1f} ms "
                    f"p99 {result['reads']['p99_ms']:.1f} ms"
                )
        finally:
            for burner in burners:
                burner.terminate()
    figures["machine"]["load_avg"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
