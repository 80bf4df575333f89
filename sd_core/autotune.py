"""Autotune: find the fastest fast path (`sd_core.fast_path`) of one device that still draws
the same image, and remember it.

`autotune(pipeline, dtypes, params)` makes the image of `params` once in float32 eager (the
reference), then, for each candidate (`candidates`: the modes `valid_modes` allows on that
device, with and without fused QKV, in each of `dtypes`), on a copy of the pipeline: applies it,
makes the image once (the first image: compilation and CUDA-graph capture happen here), then
`repeats` more times (median = its figure), and compares the image with the reference. A
candidate is kept only when its image is finite and within `Tolerance` of the reference;
`choose` then takes, per dtype, the fastest kept one. Eager in that dtype is always a
candidate, so every dtype that works at all has a choice.

The tolerance (mean absolute pixel difference from float32 eager, in levels of 255, over the
whole image) is per dtype: float32 0.5 (reordered float32 arithmetic, e.g. compiled kernels,
moves a pixel by a fraction of a level), float16 2.0 and bfloat16 4.0 (measured on an H200
with random SD-shaped weights: float16 0.26 and bfloat16 2.2 mean levels, docs/benchmarks.md).
A candidate whose image has a NaN or infinity, or is outside its dtype's tolerance, is refused
whatever its speed.

Results are kept in one JSON file (`save_autotune`, in the studio's data directory), per device
and dtype, with the device's name: a different GPU in the same slot is tuned afresh.
`chosen_fast_path` reads the choice back; the engine applies it when it loads a pipeline.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sd_core.fast_path import FastPath, apply_fast_path, valid_modes
from sd_core.params import GenerationParams

if TYPE_CHECKING:
    from sd_core.pipeline import StableDiffusionPipeline

OK = "ok"
OUTSIDE = "outside tolerance"
FAILED = "failed"


@dataclass(frozen=True)
class Tolerance:
    """Largest mean |pixel − reference pixel| (levels of 255) a candidate may have, per dtype."""

    float32: float = 0.5
    float16: float = 2.0
    bfloat16: float = 4.0

    def of(self, dtype: str) -> float:
        return float(getattr(self, dtype))


@dataclass(frozen=True)
class ModeResult:
    """One candidate's figures: median seconds per image (None when it did not run), the first
    image's seconds (compilation included), its mean pixel difference from float32 eager, and
    its status (OK, OUTSIDE, FAILED) with a note."""

    fast: FastPath
    status: str
    seconds: float | None = None
    first_s: float | None = None
    error: float | None = None
    note: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "fast_path": self.fast.as_json(),
            "label": self.fast.label,
            "status": self.status,
            "seconds": self.seconds,
            "first_s": self.first_s,
            "error": self.error,
            "note": self.note,
        }


@dataclass(frozen=True)
class AutotuneResult:
    """What one autotune found on one device: every candidate's result and, per dtype, the
    chosen fast path (the fastest within tolerance)."""

    device: str
    device_name: str
    results: tuple[ModeResult, ...]
    chosen: dict[str, FastPath] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # mode → why it is not valid here

    def as_json(self) -> dict[str, object]:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "results": [r.as_json() for r in self.results],
            "chosen": {dtype: fast.as_json() for dtype, fast in self.chosen.items()},
            "skipped": dict(self.skipped),
        }


def choose(results: Sequence[ModeResult]) -> dict[str, FastPath]:
    """Per dtype, the fast path of the fastest result with status OK (none for a dtype where no
    candidate passed)."""
    best: dict[str, ModeResult] = {}
    for result in results:
        if result.status != OK or result.seconds is None or result.fast.dtype is None:
            continue
        kept = best.get(result.fast.dtype)
        if kept is None or kept.seconds is None or result.seconds < kept.seconds:
            best[result.fast.dtype] = result
    return {dtype: result.fast for dtype, result in best.items()}


def candidates(device: torch.device, dtypes: Sequence[str]) -> list[FastPath]:
    """The fast paths worth trying on `device`: in each dtype, every valid mode, eager and
    channels_last also with fused QKV, the compiled modes with it only (fusion costs nothing
    there and saves a matrix product)."""
    valid = [mode for mode, why in valid_modes(device).items() if why is None]
    found = []
    for dtype in dtypes:
        for mode in valid:
            if mode in ("eager", "channels_last"):
                found.append(FastPath(mode, dtype))
            found.append(FastPath(mode, dtype, fused_qkv=True))
    return found


def clone_pipeline(pipeline: StableDiffusionPipeline) -> StableDiffusionPipeline:
    """A pipeline sharing `pipeline`'s tokenizer and schedule with copies of its three models,
    so a fast path can be applied (and thrown away) without touching the original."""
    clone = copy.copy(pipeline)
    clone.text_encoder = copy.deepcopy(pipeline.text_encoder)
    clone.vae = copy.deepcopy(pipeline.vae)
    clone.unet = copy.deepcopy(pipeline.unet)
    clone.fast_path = None
    return clone


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    pipeline: StableDiffusionPipeline,
    params: GenerationParams,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float, np.ndarray | None]:
    """(first image's seconds, median of `repeats` more, the (B, H, W, 3) float64 pixel levels
    of the last image, or None when its latents or decode held a NaN or an infinity: in a PNG
    those become black pixels, which a pixel comparison alone could take for a dark image)."""
    from sd_core.image_tensors import tensor_to_images

    times = []
    decoded = torch.zeros(())
    latents = torch.zeros(())
    for _ in range(repeats + 1):
        _synchronize(pipeline.device)
        began = clock()
        _, latents = pipeline.generate_latents(params)
        with torch.inference_mode():
            decoded = pipeline.decode_latents(latents)
        _synchronize(pipeline.device)
        times.append(clock() - began)
    if not (bool(torch.isfinite(latents).all()) and bool(torch.isfinite(decoded).all())):
        return times[0], statistics.median(times[1:] or times), None
    images = tensor_to_images(decoded)
    got = np.stack([np.asarray(image, dtype=np.float64) for image in images])
    return times[0], statistics.median(times[1:] or times), got


def autotune(
    pipeline: StableDiffusionPipeline,
    dtypes: Sequence[str],
    params: GenerationParams,
    *,
    modes: Sequence[FastPath] | None = None,
    repeats: int = 3,
    tolerance: Tolerance = Tolerance(),
    apply: Callable[[StableDiffusionPipeline, FastPath], None] = apply_fast_path,
    on_result: Callable[[ModeResult], None] | None = None,
) -> AutotuneResult:
    """Try each fast path (`modes`, default `candidates(device, dtypes)`) on copies of
    `pipeline`, check each image against float32 eager within `tolerance`, time it, and choose
    the fastest per dtype (see the module docstring). `apply` applies a fast path (replaceable
    for tests); `on_result` hears each candidate's result as it is measured."""
    from sd_core.devices import device_info

    device = pipeline.device
    params = replace(params, batch=1)
    tried = list(modes) if modes is not None else candidates(device, dtypes)
    reference = clone_pipeline(pipeline)
    apply_fast_path(reference, FastPath(dtype="float32"))
    _, _, expected = measure(reference, params, 0)
    del reference
    if expected is None:
        raise ValueError("the float32 eager reference image is not finite: this model is broken")
    results = []
    for fast in tried:
        result = _try(pipeline, fast, params, expected, repeats, tolerance, apply)
        results.append(result)
        if on_result is not None:
            on_result(result)
    skipped = {mode: why for mode, why in valid_modes(device).items() if why is not None}
    return AutotuneResult(
        device=str(device),
        device_name=device_info(device).name,
        results=tuple(results),
        chosen=choose(results),
        skipped=skipped,
    )


def _try(
    pipeline: StableDiffusionPipeline,
    fast: FastPath,
    params: GenerationParams,
    expected: np.ndarray,
    repeats: int,
    tolerance: Tolerance,
    apply: Callable[[StableDiffusionPipeline, FastPath], None],
) -> ModeResult:
    """One candidate on its own copy of `pipeline` (see `autotune`)."""
    dtype = fast.dtype or str(pipeline.dtype).removeprefix("torch.")
    fast = replace(fast, dtype=dtype)
    trial = clone_pipeline(pipeline)
    try:
        apply(trial, fast)
        first_s, seconds, got = measure(trial, params, repeats)
        if got is None:
            return ModeResult(fast, OUTSIDE, seconds, first_s, None, "NaN or infinite values")
        error = float(np.abs(got - expected).mean())
        if error > tolerance.of(dtype):
            note = f"mean pixel difference {error:.2f} > {tolerance.of(dtype)} allowed"
            return ModeResult(fast, OUTSIDE, seconds, first_s, error, note)
        return ModeResult(fast, OK, seconds, first_s, error)
    except Exception as exc:  # a mode that cannot run here is a result, not a failure
        return ModeResult(fast, FAILED, note=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        del trial
        if fast.mode in ("compile", "cuda_graphs"):
            torch._dynamo.reset()
        gc.collect()
        if pipeline.device.type == "cuda":
            torch.cuda.empty_cache()


# -- where the choice is kept ---------------------------------------------------------------


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_autotune(path: Path, result: AutotuneResult) -> None:
    """Keep `result` in the JSON file at `path` under its device, replacing that device's last
    result (written to a temporary file, then renamed over the old one)."""
    data = _read(path)
    data[result.device] = result.as_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(temporary, path)


def saved_autotune(path: Path, device: str) -> dict[str, object] | None:
    """The last result kept for `device` (as `AutotuneResult.as_json` wrote it), or None."""
    entry = _read(path).get(device)
    return entry if isinstance(entry, dict) else None


def chosen_fast_path(path: Path, device: str, device_name: str, dtype: str) -> FastPath | None:
    """The fast path autotune chose for `device` in `dtype`, or None when it never ran there,
    ran on another device of that id (`device_name` differs) or kept nothing in that dtype."""
    entry = saved_autotune(path, device)
    if entry is None or entry.get("device_name") != device_name:
        return None
    chosen = entry.get("chosen")
    if not isinstance(chosen, dict) or dtype not in chosen:
        return None
    try:
        return FastPath.from_json(chosen[dtype])
    except ValueError:
        return None
