"""sd_core vs diffusers at SD v1.5 shapes, identical random weights, same device and dtype.

Measures, each as the median of `--repeat` runs after three warm-up runs (one for whole images),
sd_core and diffusers alternating run by run:
  text   – text encoder, batch 2 (cond + uncond) × 77 tokens
  unet   – one UNet step with classifier-free guidance: batch 2 × 4 × 64 × 64 latents
  vae    – VAE decode of 1 × 4 × 64 × 64 latents → 512 × 512
  image  – a whole 512 × 512 txt2img image, `--steps` steps, Euler, CFG 7.5 (both pipelines)

    python benchmarks/bench_engine.py --device cpu --parts text,unet,vae
    python benchmarks/bench_engine.py --device cuda --dtype float16 --json out.json

Not a test: timings depend on the machine. Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sd_core.config import SD_V1, TINY_TEST  # noqa: E402
from sd_core.params import GenerationParams  # noqa: E402
from tests.reference import diffusers_models, random_checkpoint, sd_core_models  # noqa: E402


def compared(
    ours: Callable[[], object],
    ref: Callable[[], object],
    device: torch.device,
    repeat: int,
    warmup: int = 3,
) -> dict[str, float]:
    """Median seconds of `repeat` runs of each, after `warmup` runs of each, the two alternating
    run by run: neither gets the GPU's clock ramp-up, a cold cache or a busy moment alone."""

    def once(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        once(ours)
        once(ref)
    times: dict[str, list[float]] = {"sd_core": [], "diffusers": []}
    for _ in range(repeat):
        times["sd_core"].append(once(ours))
        times["diffusers"].append(once(ref))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--parts", default="text,unet,vae,image")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--tiny", action="store_true", help="tiny config: a smoke test of this script"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    parts = set(args.parts.split(","))

    config = TINY_TEST if args.tiny else SD_V1
    checkpoint = random_checkpoint(config, seed=0)
    ours = [m.to(device, dtype) for m in sd_core_models(checkpoint, config)]
    ref = [m.to(device, dtype) for m in diffusers_models(checkpoint, config, sdpa=True)]
    del checkpoint
    g = torch.Generator("cpu").manual_seed(0)
    ids = torch.randint(0, 49408, (2, 77), generator=g).to(device)
    latents = torch.randn(2, 4, 64, 64, generator=g).to(device, dtype)
    context = torch.randn(2, 77, config.unet.context_dim, generator=g).to(device, dtype)
    t = torch.tensor([500.0, 500.0], device=device)

    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        if "text" in parts:
            results["text_encoder"] = compared(
                lambda: ours[0](ids), lambda: ref[0](ids).last_hidden_state, device, args.repeat
            )
        if "unet" in parts:
            results["unet_step_cfg"] = compared(
                lambda: ours[2](latents, t, context),
                lambda: ref[2](latents, t, context).sample,
                device,
                args.repeat,
            )
        if "vae" in parts:
            z = latents[:1]
            results["vae_decode"] = compared(
                lambda: ours[1].decode(z), lambda: ref[1].decode(z).sample, device, args.repeat
            )
        if "image" in parts:
            results[f"image_512_{args.steps}_steps"] = time_images(
                config, ours, ref, device, dtype, args
            )
        for name, r in results.items():
            r["ratio_sd_core_over_diffusers"] = r["sd_core"] / r["diffusers"]
            print(
                f"{name:>22}: sd_core {r['sd_core']:.4f} s   diffusers {r['diffusers']:.4f} s"
                f"   ratio {r['ratio_sd_core_over_diffusers']:.3f}"
            )
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeat": args.repeat,
        "results": results,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def time_images(config, ours, ref, device, dtype, args) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Whole 512×512 images through both pipelines with the same weights."""
    import diffusers

    from sd_core.pipeline import StableDiffusionPipeline
    from tests.clip_reference import hf_tokenizer

    ours_pipe = StableDiffusionPipeline(
        config,
        ours[0],
        ours[1],
        ours[2],
        device=device,
        dtype=dtype,
        model_name="random",
        model_hash="0" * 10,
    )
    config = json.loads(
        (
            Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "scheduler_config.json"
        ).read_text()
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = hf_tokenizer(Path(tmp) / "tokenizer")
    ref_pipe = diffusers.StableDiffusionPipeline(
        vae=ref[1],
        text_encoder=ref[0],
        tokenizer=tokenizer,
        unet=ref[2],
        scheduler=diffusers.EulerDiscreteScheduler.from_config(config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref_pipe.set_progress_bar_config(disable=True)
    prompt = "a photo of an astronaut riding a horse on mars"
    repeat = max(1, args.repeat // 3)
    return compared(
        lambda: ours_pipe.generate(GenerationParams(prompt, seed=1, steps=args.steps,
                                                    sampler="euler", guidance=7.5, width=512,
                                                    height=512)).images,
        lambda: ref_pipe(prompt, num_inference_steps=args.steps, guidance_scale=7.5, height=512,
                         width=512, generator=torch.Generator("cpu").manual_seed(1)).images,
        device, repeat, warmup=1,
    )  # fmt: skip


if __name__ == "__main__":
    main()
