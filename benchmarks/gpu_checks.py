"""Checks that need a CUDA device (run by hand on a GPU machine; CI has none).

1. Same seed → same image on CPU and CUDA (float32), for a deterministic and a stochastic
   sampler, with a random-weight tiny checkpoint: max pixel difference reported.
2. float16 / bfloat16 on CUDA give finite images close to float32.

    python benchmarks/gpu_checks.py --json gpu_checks.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sd_core  # noqa: E402
from sd_core.checkpoint import save_checkpoint  # noqa: E402
from sd_core.config import TINY_TEST  # noqa: E402
from sd_core.params import GenerationParams  # noqa: E402
from tests.reference import random_checkpoint  # noqa: E402


def pixels(images) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = save_checkpoint(
            Path(tmp) / "tiny.safetensors", random_checkpoint(TINY_TEST, 3), TINY_TEST
        )
        cpu = sd_core.load_pipeline(path, device="cpu")
        gpu = sd_core.load_pipeline(path, device="cuda", dtype="float32")
        for sampler in ("euler", "euler_a", "dpmpp_2m"):
            params = GenerationParams("a red circle", seed=42, steps=10, sampler=sampler, batch=2)
            a, b = pixels(cpu.generate(params).images), pixels(gpu.generate(params).images)
            report[f"cpu_vs_cuda_fp32_{sampler}_max_pixel_diff"] = int(np.abs(a - b).max())
        for dtype in ("float16", "bfloat16"):
            low = sd_core.load_pipeline(path, device="cuda", dtype=dtype)
            params = GenerationParams("a red circle", seed=42, steps=10, sampler="euler")
            a, b = pixels(cpu.generate(params).images), pixels(low.generate(params).images)
            report[f"cpu_fp32_vs_cuda_{dtype}_mean_pixel_diff"] = float(np.abs(a - b).mean())
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
