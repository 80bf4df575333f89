"""sd_core's fast paths against diffusers on the same weights, in one process, CPU or CUDA.

For each implementation — diffusers (its SDPA attention, as shipped) and sd_core in each fast
path asked for (`--modes`, `sd_core/fast_path.py`) — on the same weights and dtype:
  image      a whole txt2img image, `--steps` Euler steps, CFG 7.5 (text encoding and decode
             included), median of `--repeat` after one warm-up, the implementations alternating;
             the ratio is against diffusers' runs alternating with that row's
  first      that warm-up image alone (compilation and CUDA-graph capture happen there)
  unet       one UNet call with CFG (batch 2), median of 5 × `--repeat`
  peak       (CUDA) the implementation's peak memory: its weights plus the most allocated above
             what was allocated before its image
  vs fp32    sd_core: mean |pixel − sd_core float32 eager's pixel| (levels of 255)

    python benchmarks/bench_fast_path.py --device cpu --model builtin --steps 20 \\
        --modes eager,eager+fused --doc docs/benchmarks.md
    python benchmarks/bench_fast_path.py --device cuda --dtype float16 --model sd15 --size 512 \\
        --steps 50 --modes eager,eager+fused,channels_last+fused,compile+fused,cuda_graphs+fused \\
        --json fast_path.json --doc docs/benchmarks.md

`--model builtin` is dali-tiny (native 64²); `sd15` is SD v1.5's shapes with random weights (no
download). The table replaces the one of the same device kind, model and dtype between this
script's markers in `--doc`, with device, versions and date. Not a test: timings depend on the
machine and what else runs on it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sd_core.autotune import clone_pipeline  # noqa: E402
from sd_core.fast_path import FastPath, apply_fast_path  # noqa: E402
from sd_core.params import GenerationParams  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"


def parse_mode(text: str, dtype: str) -> FastPath:
    """`compile+fused` → FastPath("compile", dtype, fused_qkv=True); `eager@bfloat16` runs
    in bfloat16 whatever `--dtype` says (diffusers stays in `--dtype`)."""
    text, _, own_dtype = text.partition("@")
    dtype = own_dtype or dtype
    mode, _, extra = text.partition("+")
    if extra not in ("", "fused"):
        raise SystemExit(f"--modes: {text!r}: only '+fused' may follow a mode")
    return FastPath(mode, dtype, fused_qkv=extra == "fused")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    began = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - began


def load(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, Any]:
    """(config, float32 sd_core pipeline on `device`, diffusers pipeline in `--dtype`)."""
    import diffusers

    import sd_core
    from sd_core.checkpoint import checkpoint_state_dict
    from sd_core.config import SD_V1
    from sd_core.pipeline import StableDiffusionPipeline
    from tests.clip_reference import hf_tokenizer
    from tests.reference import diffusers_models, random_checkpoint, sd_core_models

    dtype = getattr(torch, args.dtype)
    if args.model == "builtin":
        ours = sd_core.load_pipeline(device=str(device), dtype="float32")
        config = ours.config
        checkpoint = checkpoint_state_dict(
            {"text_encoder": ours.text_encoder, "vae": ours.vae, "unet": ours.unet}
        )
        checkpoint = {k: v.detach().to("cpu", torch.float32).clone() for k, v in checkpoint.items()}
    else:
        config = SD_V1
        checkpoint = random_checkpoint(config, seed=0)
        clip, vae, unet = sd_core_models(checkpoint, config)
        ours = StableDiffusionPipeline(config, clip, vae, unet, device=device,
                                       dtype=torch.float32, model_name="random")  # fmt: skip
    te, vae, unet = (m.to(device, dtype) for m in diffusers_models(checkpoint, config, sdpa=True))
    del checkpoint
    scheduler_config = json.loads((ROOT / "tests/fixtures/scheduler_config.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = hf_tokenizer(Path(tmp) / "tokenizer")
    ref = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler.from_config(scheduler_config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    ref.set_progress_bar_config(disable=True)
    return config, ours, ref


def pixels(images: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(image, dtype=np.float64) for image in images])


def model_bytes(*models: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in models for p in m.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--model", default="builtin", choices=["builtin", "sd15"])
    parser.add_argument("--size", type=int, default=None, help="image side (default: native)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--modes", default="eager,eager+fused")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--doc", type=Path, default=None, help="docs/benchmarks.md to update")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 eager is the reference
        torch.backends.cudnn.allow_tf32 = False
    started = time.perf_counter()
    config, base, ref = load(args, device)
    size = args.size or config.native_size
    latent = size // 8
    params = GenerationParams(PROMPT, seed=1, steps=args.steps, sampler="euler", guidance=7.5,
                              width=size, height=size)  # fmt: skip
    fast_paths = [parse_mode(m, args.dtype) for m in args.modes.split(",")]

    def ref_image() -> list[Any]:
        generator = torch.Generator("cpu").manual_seed(1)
        return ref(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, height=size,
                   width=size, generator=generator).images  # type: ignore[no-any-return]  # fmt: skip

    reference_pipe = clone_pipeline(base)
    expected = pixels(reference_pipe.generate(params).images)  # sd_core float32 eager
    del reference_pipe

    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(2, 4, latent, latent, generator=g).to(device)
    context = torch.randn(2, 77, config.unet.context_dim, generator=g).to(device)
    t = torch.tensor([500.0, 500.0], device=device)
    rows: list[dict[str, Any]] = []
    ref_times: list[float] = []
    ref_unet: list[float] = []

    def ref_step() -> object:
        return ref.unet(x.to(ref.unet.dtype), t, context.to(ref.unet.dtype))

    with torch.inference_mode():
        ref_first = timed(ref_image, device)
        ref_pixels = pixels(ref_image())
    for fast in fast_paths:
        row = measure_mode(base, fast, params, expected, (x, t, context), args, device,
                           lambda: timed(ref_image, device), lambda: timed(ref_step, device),
                           ref_times, ref_unet)  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        if fast.mode in ("compile", "cuda_graphs"):
            torch._dynamo.reset()
        gc.collect()
    diffusers_row = {
        "implementation": "diffusers",
        "fast_path": f"as shipped (SDPA), {args.dtype}",
        "first_s": ref_first,
        "image_s": statistics.median(ref_times) if ref_times else None,
        "unet_cfg_ms": 1000 * statistics.median(ref_unet) if ref_unet else None,
        "vs_fp32_levels": float(np.abs(ref_pixels - expected).mean()),
    }
    rows.append(diffusers_row)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "device_kind": device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "python": platform.python_version(),
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "size": size,
        "steps": args.steps,
        "dtype": args.dtype,
        "repeat": args.repeat,
        "wall_s": time.perf_counter() - started,
        "rows": rows,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.doc:
        update_doc(args.doc, report)


def measure_mode(
    base: Any,
    fast: FastPath,
    params: GenerationParams,
    expected: np.ndarray,
    unet_inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    args: argparse.Namespace,
    device: torch.device,
    ref_image: Callable[[], float],
    ref_step: Callable[[], float],
    ref_times: list[float],
    ref_unet: list[float],
) -> dict[str, Any]:
    """One row: sd_core in `fast` (on a copy of `base`), timed alternately with diffusers,
    whose timings are appended to `ref_times` and `ref_unet`."""
    x, t, context = unet_inputs
    pipe = clone_pipeline(base)
    row: dict[str, Any] = {"implementation": "sd_core", "fast_path": fast.label}
    try:
        apply_fast_path(pipe, fast)
        before = 0
        if device.type == "cuda":
            gc.collect()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        row["first_s"] = timed(lambda: pipe.generate(params), device)
        if device.type == "cuda":
            ours_weights = model_bytes(pipe.text_encoder, pipe.vae, pipe.unet)
            extra = torch.cuda.max_memory_allocated(device) - before
            row["peak_gib"] = (ours_weights + extra) / 2**30
        ours_times, beside = [], []
        images: list[Any] = []
        for _ in range(args.repeat):  # alternating with diffusers, run by run
            began = time.perf_counter()
            images = pipe.generate(params).images
            ours_times.append(time.perf_counter() - began)
            with torch.inference_mode():
                beside.append(ref_image())
        ref_times += beside
        row["image_s"] = statistics.median(ours_times)
        # Against diffusers' runs of the same window: a shared machine's speed drifts.
        row["ratio_to_diffusers"] = row["image_s"] / statistics.median(beside)
        with torch.inference_mode():
            xin, cin = x.to(pipe.dtype), context.to(pipe.dtype)
            pipe.unet(xin, t, cin)  # a compiled UNet meets this shape once first
            steps = []
            for _ in range(5 * args.repeat):
                steps.append(timed(lambda: pipe.unet(xin, t, cin), device))
                ref_unet.append(ref_step())
        row["unet_cfg_ms"] = 1000 * statistics.median(steps)
        got = pixels(images)
        row["vs_fp32_levels"] = float(np.abs(got - expected).mean())
        row["finite"] = bool(np.isfinite(got).all())
    except Exception as exc:  # a mode that cannot run here is a row, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}"[:200]
    return row


def cpu_name() -> str:
    from sd_core.devices import cpu_device

    return cpu_device().name


def table(report: dict[str, Any]) -> str:
    """The markdown of one run: a heading line with device, versions and date, then a row per
    implementation and fast path."""

    def cell(value: Any, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    model = "dali-tiny" if report["model"] == "builtin" else "SD v1.5 shapes, random weights"
    lines = [
        f"**{report['device']}** ({report['device_kind']}, {report['threads']} threads), "
        f"torch {report['torch']}, diffusers {report['diffusers']}, {report['date']}: {model}, "
        f"{report['size']}², {report['steps']} Euler steps, CFG 7.5, {report['dtype']}, "
        f"median of {report['repeat']} (whole run {report['wall_s']:.0f} s).",
        "",
        "| implementation | fast path | image | ÷ diffusers | first image | UNet step with CFG "
        "| peak memory | vs sd_core fp32 eager |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['implementation']} | {r['fast_path']} | failed: {r['error']} "
                         "| | | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['implementation']} | {r['fast_path']} | {cell(r.get('image_s'), '.3f')} s "
            f"| {cell(r.get('ratio_to_diffusers'), '.2f')} | {cell(r.get('first_s'), '.2f')} s "
            f"| {cell(r.get('unet_cfg_ms'), '.1f')} ms | {cell(r.get('peak_gib'), '.2f')} GiB "
            f"| {cell(r.get('vs_fp32_levels'), '.2f')} levels |"
        )
    return "\n".join(lines)


def update_doc(path: Path, report: dict[str, Any]) -> None:
    """Replace this run's table (same device kind, model, dtype) between its markers in `path`,
    or append it under the section "Fast paths" (created if missing)."""
    key = f"{report['device_kind']}-{report['model']}-{report['dtype']}"
    begin, end = f"<!-- bench_fast_path {key} -->", f"<!-- /bench_fast_path {key} -->"
    block = f"{begin}\n{table(report)}\n{end}"
    text = path.read_text(encoding="utf-8")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        heading = "## Fast paths and autotune (`benchmarks/bench_fast_path.py`)"
        if heading not in text:
            text = text.rstrip("\n") + f"\n\n{heading}\n"
        head, rest = text.split(heading, 1)
        text = head + heading + rest.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
