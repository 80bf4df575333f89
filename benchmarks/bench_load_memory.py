"""Peak RAM while loading a full-size SD v1.5 checkpoint, against the loaded model's size.

Writes random-weight SD v1.5 checkpoints (original layout, all 1131 keys + the 14 extra keys)
into a scratch folder, then loads each in a fresh subprocess with `sd_core.checkpoint.load_models`
and reports peak resident memory growth (ru_maxrss after load − RSS after imports) divided by
the size of the loaded weights in the target dtype. Target: ≤ 1.3.

    python benchmarks/bench_load_memory.py --scratch /tmp/dali-bench
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys, json, torch
sys.path.insert(0, {root!r})
from sd_core.checkpoint import load_models
def status(field):
    # VmHWM is this process's own peak: ru_maxrss would inherit the parent's across fork.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
base = status("VmRSS")
config, models, _ = load_models({path!r}, dtype=getattr(torch, {dtype!r}))
peak = status("VmHWM")
size = sum(t.numel() * t.element_size() for m in models.values() for t in m.state_dict().values())
print(json.dumps({{"base": base, "peak": peak, "model_bytes": size}}))
"""


def write_checkpoints(scratch: Path) -> list[tuple[Path, str]]:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT))
    from sd_core.config import SD_V1
    from tests.reference import random_checkpoint

    scratch.mkdir(parents=True, exist_ok=True)
    jobs = []
    fp32 = scratch / "sd15-random-fp32.safetensors"
    fp16 = scratch / "sd15-random-fp16.safetensors"
    ckpt16 = scratch / "sd15-random-fp16.ckpt"
    if not (fp32.exists() and fp16.exists() and ckpt16.exists()):
        state = random_checkpoint(SD_V1, seed=0)
        for key in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod"):
            state[key] = torch.zeros(1000)
        state["model_ema.decay"] = torch.tensor(0.9999)
        save_file({k: v.contiguous() for k, v in state.items()}, str(fp32))
        half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
        del state
        save_file({k: v.contiguous() for k, v in half.items()}, str(fp16))
        torch.save({"state_dict": half}, ckpt16)
        del half
    jobs += [
        (fp32, "float32"),
        (fp16, "float16"),
        (fp16, "float32"),
        (ckpt16, "float16"),
        (ckpt16, "float32"),
    ]
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/dali-bench"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for path, dtype in write_checkpoints(args.scratch):
        out = subprocess.run(
            [sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path), dtype=dtype)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = (r["peak"] - r["base"]) / r["model_bytes"]
        rows.append(
            {
                "file": path.name,
                "dtype": dtype,
                "model_gib": r["model_bytes"] / 2**30,
                "peak_growth_gib": (r["peak"] - r["base"]) / 2**30,
                "ratio": ratio,
            }
        )
        print(
            f"{path.name:>32} → {dtype:<8} model {rows[-1]['model_gib']:.2f} GiB, "
            f"peak growth {rows[-1]['peak_growth_gib']:.2f} GiB, ratio {ratio:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
