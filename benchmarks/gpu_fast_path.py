"""Every GPU target of the fast path in one run (≤ 8 minutes on one H100/H200), with JSON out.

Issue 18's targets, fp16, 512², batch 1, CFG 7.5, SD v1.5 shapes with random weights (no
download), side by side with diffusers in the same process:
  1. UNet step with CFG ≤ 4.0 ms, 50-step image ≤ 0.30 s, peak GPU memory ≤ 2.6 GiB: sd_core in
     eager, fused QKV, compile and CUDA graphs against diffusers (`bench_fast_path.measure_mode`).
  2. First image after start-up ≤ 60 s with compiled artefacts cached across restarts: two fresh
     processes, one after the other, sharing a TORCHINDUCTOR_CACHE_DIR, each timed from its start
     to its first image (the second is the "restart").
  3. fp16 and bf16 within tolerance of fp32 (`sd_core.autotune.Tolerance`): each row's mean
     pixel difference from sd_core float32 eager (bf16: the row "eager, bfloat16").
  4. The fp16 VAE decode never NaN / black: SD's VAE in float16 on ordinary latents and on
     latents scaled until float16 overflows; `decode_latents` must answer finite images.
  5. No host sync inside the sampling loop: CUDA's sync debug mode counts the syncs of a whole
     image at 10 and at 20 steps; equal counts mean none of them is per step.

    python benchmarks/gpu_fast_path.py --json gpu_fast_path.json --doc docs/benchmarks.md
    python benchmarks/gpu_fast_path.py --smoke   # the same code on the CPU, dali-tiny, seconds

Each part prints its JSON as it finishes, so a run cut short still says what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"unet_cfg_ms": 4.0, "image_s": 0.30, "peak_gib": 2.6, "first_image_s": 60.0}

FIRST_IMAGE = """
import sys, time
began = time.perf_counter()
sys.path.insert(0, {root!r})
import torch
from sd_core.config import SD_V1
from sd_core.fast_path import FastPath, apply_fast_path
from sd_core.params import GenerationParams
from sd_core.pipeline import StableDiffusionPipeline
from sd_core.checkpoint import build_models
models = build_models({config}, device={device!r})
for m in models.values():
    m.to(torch.float16).eval().requires_grad_(False)
pipe = StableDiffusionPipeline({config}, models["text_encoder"], models["vae"], models["unet"],
                               device=torch.device({device!r}), dtype=torch.float16)
apply_fast_path(pipe, FastPath({mode!r}, "float16", fused_qkv=True))
pipe.generate(GenerationParams("a cat", seed=1, steps={steps}, sampler="euler", guidance=7.5,
                               width={size}, height={size}))
print("FIRST_IMAGE_S", time.perf_counter() - began)
"""


def part(report: dict[str, Any], name: str, value: Any) -> None:
    report[name] = value
    print(json.dumps({name: value}), flush=True)


def speed(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Targets 1 and 3: bench_fast_path's rows for every mode plus bf16 eager."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_fast_path as bench

    modes = (
        "eager,eager+fused,compile+fused"
        if args.smoke
        else "eager,eager+fused,eager@bfloat16,compile+fused,cuda_graphs+fused"
    )
    argv = ["--device", args.device, "--dtype", "float16" if not args.smoke else "float32",
            "--model", "builtin" if args.smoke else "sd15", "--steps", str(args.steps),
            "--repeat", str(args.repeat), "--modes", modes]  # fmt: skip
    out = Path(tempfile.mkdtemp()) / "speed.json"
    argv += ["--json", str(out)] + (["--doc", str(args.doc)] if args.doc else [])
    sys.argv = ["bench_fast_path.py", *argv]
    bench.main()
    part(report, "speed", json.loads(out.read_text()))


def first_image(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Target 2: two fresh processes sharing the inductor cache."""
    mode = "compile" if args.smoke else "cuda_graphs"
    config = "SD_V1" if not args.smoke else "TINY_TEST"
    script = FIRST_IMAGE.format(root=str(ROOT), device=args.device, mode=mode,
                                steps=args.steps, size=512 if not args.smoke else 64,
                                config=config)  # fmt: skip
    if args.smoke:
        script = script.replace("import SD_V1", "import TINY_TEST")
    times = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TORCHINDUCTOR_FX_GRAPH_CACHE="1",
                   TORCHINDUCTOR_AUTOGRAD_CACHE="1")  # fmt: skip
        for _ in range(2):
            began = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                  text=True, timeout=args.first_timeout)  # fmt: skip
            wall = time.perf_counter() - began
            inside = [line for line in done.stdout.splitlines() if line.startswith("FIRST_IMAGE_S")]
            times.append({"process_wall_s": wall, "in_process_s": float(inside[0].split()[1])
                          if inside else None, "rc": done.returncode,
                          "stderr_tail": done.stderr[-600:] if done.returncode else ""})  # fmt: skip
    part(report, "first_image", {"mode": mode, "cold": times[0], "restart": times[1]})


def fp16_vae(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Target 4: SD's VAE in float16 on ordinary and on overflowing latents."""
    from sd_core.config import SD_V1, TINY_TEST
    from sd_core.tiled_vae import VaeTiling, vae_decode
    from sd_core.vae_upcast import decode_finite
    from tests.reference import random_part, sd_core_part

    config = TINY_TEST if args.smoke else SD_V1
    dtype = torch.float32 if args.smoke and args.device == "cpu" else torch.float16
    vae = sd_core_part("vae", random_part("vae", config, seed=0), config).to(args.device, dtype)
    g = torch.Generator("cpu").manual_seed(0)
    found = []
    with torch.inference_mode():
        for scale in (1.0, 30.0, 300.0, 3000.0):
            z = (torch.randn(1, 4, 64, 64, generator=g) * scale).to(args.device, dtype)
            plain = vae_decode(vae, z, VaeTiling())
            guarded = decode_finite(vae, z, VaeTiling())
            found.append({
                "latent_scale": scale,
                "plain_finite": bool(torch.isfinite(plain).all()),
                "guarded_finite": bool(torch.isfinite(guarded).all()),
                "guarded_dtype": str(guarded.dtype),
                "guarded_black": bool(guarded.abs().max() == 0),
            })  # fmt: skip
    part(report, "fp16_vae", {"dtype": str(dtype), "runs": found,
                              "never_nan": all(r["guarded_finite"] for r in found)})  # fmt: skip


def host_syncs(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """Target 5: the syncs of a whole latent generation at 10 and 20 steps, counted."""
    if args.device == "cpu":
        part(report, "host_syncs", "CPU: see tests/sd_core/test_no_host_sync.py")
        return
    from sd_core.checkpoint import build_models
    from sd_core.config import SD_V1
    from sd_core.params import GenerationParams
    from sd_core.pipeline import StableDiffusionPipeline

    models = build_models(SD_V1, device=args.device)
    for m in models.values():
        m.to(torch.float16).eval().requires_grad_(False)
    pipe = StableDiffusionPipeline(SD_V1, models["text_encoder"], models["vae"], models["unet"],
                                   device=torch.device(args.device), dtype=torch.float16)  # fmt: skip
    counts = {}
    for sampler in ("euler", "euler_a", "dpmpp_2m"):
        for steps in (10, 20):
            params = GenerationParams("a cat", seed=1, steps=steps, sampler=sampler, guidance=7.5,
                                      width=256, height=256)  # fmt: skip
            pipe.generate_latents(params)  # warm
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    pipe.generate_latents(params)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts[f"{sampler}_{steps}"] = sum("synchroniz" in str(w.message) for w in caught)
    per_step = any(counts[f"{s}_20"] > counts[f"{s}_10"] for s in ("euler", "euler_a", "dpmpp_2m"))
    part(report, "host_syncs", {"counts": counts, "syncs_grow_with_steps": per_step})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parts", default="vae,syncs,speed,first")
    parser.add_argument("--first-timeout", type=int, default=240)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="CPU, dali-tiny, few steps")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.steps, args.repeat = "cpu", 4, 1
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "targets": TARGETS,
    }
    began = time.perf_counter()
    steps = {"vae": fp16_vae, "syncs": host_syncs, "speed": speed, "first": first_image}
    for name in args.parts.split(","):
        try:
            steps[name](args, report)
        except Exception as exc:  # one part failing must not lose the others' figures
            part(report, f"{name}_error", f"{type(exc).__name__}: {exc}"[:400])
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    report["wall_s"] = time.perf_counter() - began
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
