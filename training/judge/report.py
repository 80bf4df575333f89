"""A model judged on held-out captions: every figure of issue 17 against its target.

`python -m training judge --checkpoint F --count 300 --steps 20` draws image i of the first
`count` held-out captions (`training.shapes.held_out_scenes`) with seed `eval_seed(i)` — the
same images `python -m training eval` judges with the project's detector — through
`sd_core.load_pipeline(F).generate(...)`, with the file's default sampler and recorded guidance,
and judges each with `training.judge.verdict`. The detector's reading of the same images is
reported beside it, so the two judges can be compared image for image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from training.judge.ideal import IdealFit
from training.judge.verdict import ALL, IOU_GOOD, Verdict, judge_image
from training.shapes import Scene, eval_seed, held_out_scenes, render

# Issue 17's targets. "flat": the issue asks for a flat background (std ≤ 3/255) without a
# share; we hold it to 98 %, as colour and position.
TARGETS: dict[str, float] = {
    "median_iou": 0.85,
    "iou_at_least_0.7": 0.90,
    "shape": 0.97,
    "color": 0.98,
    "position": 0.98,
    "size": 0.95,
    "all_attributes": 0.92,
    "flat": 0.98,
}
# Figures reported without a target of their own.
INFO = (
    "style",  # v2 only
    "background",
    "mean_delta_e",
    "detector_shape",
    "detector_all_four",
    "seconds_per_image",
)
# The negative-prompt check (issue 17: "negative 'red' moves the colour away"), when it runs.
NEGATIVE_INFO = ("negative_plain_delta_e", "negative_with_delta_e", "negative_moved")
NEGATIVE_MOVE = 10.0  # ΔE: a clearly visible shift (red and orange are ≈ 40 apart)
_NEGATIVE_SEED_OFFSET = 20_000


@dataclass
class JudgeReport:
    """Figures of one judged run (`figures`: name → value) and each image's verdict."""

    count: int
    steps: int
    sampler: str
    guidance: float
    figures: dict[str, float]
    images: list[dict[str, Any]] = field(default_factory=list)
    size: int = 64  # pixels, square

    def meets_targets(self) -> dict[str, bool]:
        return {name: self.figures[name] >= target for name, target in TARGETS.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance": self.guidance,
            "size": self.size,
            "figures": self.figures,
            "targets": TARGETS,
            "meets_targets": self.meets_targets(),
            "images": self.images,
        }

    def table(self) -> str:
        """The figures against their targets, as a Markdown table."""
        rows = ["| figure | measured | target | met |", "| --- | --- | --- | --- |"]
        for name, target in TARGETS.items():
            value = self.figures[name]
            shown = f"{value:.3f}" if name == "median_iou" else f"{100 * value:.1f} %"
            goal = f"≥ {target:.2f}" if name == "median_iou" else f"≥ {100 * target:.0f} %"
            rows.append(f"| {name} | {shown} | {goal} | {'yes' if value >= target else 'no'} |")
        for name in tuple(n for n in INFO + NEGATIVE_INFO if n in self.figures):
            value = self.figures[name]
            plain = name.endswith("delta_e") or name == "seconds_per_image"
            shown = f"{value:.2f}" if plain else f"{100 * value:.1f} %"
            rows.append(f"| {name} | {shown} | — | — |")
        return "\n".join(rows)


def figures(verdicts: Sequence[Verdict], scenes: Sequence[Scene]) -> dict[str, float]:
    """The run's figures from each image's verdict (without timing and the detector's)."""
    matches = [v.matches(s) for v, s in zip(verdicts, scenes, strict=True)]
    n = len(matches)
    ious = [v.iou for v in verdicts]
    out = {
        "median_iou": float(statistics.median(ious)),
        "iou_at_least_0.7": sum(i >= IOU_GOOD for i in ious) / n,
    }
    for name in ("shape", "color", "position", "size", "flat", "background"):
        out[name] = sum(m[name] for m in matches) / n
    out["all_attributes"] = sum(all(m[a] for a in ALL) for m in matches) / n
    finite = [v.delta_e for v in verdicts if np.isfinite(v.delta_e)]
    out["mean_delta_e"] = float(np.mean(finite)) if finite else float("nan")
    return out


def _first_held_out(count: int) -> tuple[Scene, ...]:
    """The first `count` held-out captions; ValueError naming --count when there are fewer."""
    scenes = held_out_scenes()
    if not 1 <= count <= len(scenes):
        raise ValueError(f"--count {count} is out of range; allowed: 1..{len(scenes)}")
    return scenes[:count]


def _draw(
    pipe: Any, caption: str, seed: int, steps: int, sampler: str, guidance: float, size: int
) -> tuple[np.ndarray, float]:
    """One `size`-px image of `caption` → ((size, size, 3) uint8 RGB, seconds it took)."""
    from sd_core.params import GenerationParams

    params = GenerationParams(caption, seed=seed, steps=steps, sampler=sampler,
                              guidance=guidance, width=size, height=size)  # fmt: skip
    started = time.perf_counter()
    image = np.asarray(pipe.generate(params).images[0].convert("RGB"))
    return image, time.perf_counter() - started


def judge_model(
    pipe: Any,
    count: int,
    steps: int,
    sampler: str,
    guidance: float,
    progress: bool = True,
    keep: Callable[[Scene, np.ndarray, IdealFit, Verdict], None] | None = None,
    size: int = 64,
) -> JudgeReport:
    """Draw and judge the first `count` held-out captions, `size` × `size` pixels.
    `keep(scene, image, fit, verdict)` is called for each image in order (the gallery uses
    it). The detector reads 64-px images: at another size its figures are left out."""
    from training.detector import detect

    scenes = _first_held_out(count)
    verdicts: list[Verdict] = []
    times: list[float] = []
    detector_shape = detector_four = 0
    images: list[dict[str, Any]] = []
    for i in tqdm(range(count), desc="judge", disable=not progress):
        scene, seed = scenes[i], eval_seed(i)
        image, seconds = _draw(pipe, scene.caption, seed, steps, sampler, guidance, size)
        times.append(seconds)
        verdict, fit = judge_image(image, scene)
        verdicts.append(verdict)
        if size == 64:
            seen = detect(image).matches(scene)
            detector_shape += seen["shape"]
            detector_four += all(seen[a] for a in ALL)
        images.append({"caption": scene.caption, "seed": seed, **verdict.as_dict()})
        if keep is not None:
            keep(scene, image, fit, verdict)
    out = figures(verdicts, scenes)
    if size == 64:
        out["detector_shape"] = detector_shape / count
        out["detector_all_four"] = detector_four / count
    out["seconds_per_image"] = float(statistics.median(times))
    return JudgeReport(count, steps, sampler, guidance, out, images, size)


AUTOENCODER = "autoencoder"  # a report's "sampler" when it judged round trips, not samples


def judge_autoencoder(pipe: Any, count: int, progress: bool = True) -> JudgeReport:
    """Judge the first `count` held-out renders (seed `eval_seed(i)`) after a round trip
    through the model's autoencoder alone — the encoder's posterior mean, decoded; no text, no
    diffusion — so a run can tell the outlines the decoder loses from those the UNet does."""
    import torch

    scenes = _first_held_out(count)
    verdicts: list[Verdict] = []
    images: list[dict[str, Any]] = []
    vae = pipe.vae
    parameter = next(vae.parameters())
    for i in tqdm(range(count), desc="judge autoencoder", disable=not progress):
        scene, seed = scenes[i], eval_seed(i)
        pixels = torch.from_numpy(render(scene, seed)).permute(2, 0, 1)[None]
        x = (pixels.to(parameter.device, torch.float32) / 127.5 - 1).to(parameter.dtype)
        with torch.inference_mode():
            mean, _logvar = vae.encode(x)
            decoded = vae.decode(mean)[0].float().clamp(-1, 1)
        image = ((decoded + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        verdict, _fit = judge_image(image, scene)
        verdicts.append(verdict)
        images.append({"caption": scene.caption, "seed": seed, **verdict.as_dict()})
    return JudgeReport(count, 0, AUTOENCODER, 0.0, figures(verdicts, scenes), images)


def negative_check(
    pipe: Any, pairs: int, steps: int, sampler: str, guidance: float
) -> dict[str, float]:
    """Does a negative prompt push the image away from what it names?

    For `pairs` held-out captions (from the 301st on, seeds apart from the judged images'),
    each is drawn twice with the same seed: plainly, and with the caption's own colour word as
    the negative prompt. Figures: the mean ΔE of the shape's inner pixels to the named colour
    in each case, and the share of pairs where the negative moved it by ≥ `NEGATIVE_MOVE`.
    """
    from sd_core.params import GenerationParams

    scenes = held_out_scenes()[300 : 300 + pairs]
    plain, negated, moved = [], [], 0
    for i, scene in enumerate(scenes):
        seed = eval_seed(_NEGATIVE_SEED_OFFSET + i)
        deltas = []
        for negative in ("", scene.color):
            params = GenerationParams(scene.caption, negative_prompt=negative, seed=seed,
                                      steps=steps, sampler=sampler, guidance=guidance)  # fmt: skip
            image = np.asarray(pipe.generate(params).images[0].convert("RGB"))
            verdict, _ = judge_image(image, scene)
            # Nothing drawn in the colour at all: as far from it as the background is.
            deltas.append(verdict.delta_e if np.isfinite(verdict.delta_e) else 100.0)
        plain.append(deltas[0])
        negated.append(deltas[1])
        moved += deltas[1] - deltas[0] >= NEGATIVE_MOVE
    return {
        "negative_plain_delta_e": float(np.mean(plain)),
        "negative_with_delta_e": float(np.mean(negated)),
        "negative_moved": moved / len(scenes),
    }


def judge_model_v2(
    pipe: Any,
    count: int,
    steps: int,
    sampler: str,
    guidance: float,
    progress: bool = True,
    size: int = 64,
) -> JudgeReport:
    """Draw and judge `count` held-out v2 captions (`random_v2_scene`, seeded 17: half styled
    one-object, half two-object), image i with `eval_seed(30_000 + i)`, `size` px square.

    Per object: IoU, colour, shape, size, style; "position" is the anchor for one object and
    the relation for two; "all_attributes": every object's colour, shape, size and style and
    the position or relation right.
    """
    from training.judge.verdict import judge_pair
    from training.shapes import PairScene, random_v2_scene

    rng = np.random.default_rng(17)
    scenes = [random_v2_scene(rng, held_out=True) for _ in range(count)]
    ious: list[float] = []
    right = dict.fromkeys(("color", "shape", "size", "style"), 0)
    objects = placed = every = flat = 0
    times: list[float] = []
    images: list[dict[str, Any]] = []
    for i, scene in enumerate(tqdm(scenes, desc="judge v2", disable=not progress)):
        seed = eval_seed(30_000 + i)
        image, seconds = _draw(pipe, scene.caption, seed, steps, sampler, guidance, size)
        times.append(seconds)
        if isinstance(scene, PairScene):
            pair, _ = judge_pair(image, scene)
            read = [(pair.first, scene.first), (pair.second, scene.second)]
            where = pair.relation == scene.relation
            images.append({"caption": scene.caption, "seed": seed, "relation": pair.relation,
                           "first": pair.first.as_dict(), "second": pair.second.as_dict()})  # fmt: skip
        else:
            verdict, _ = judge_image(image, scene)
            read = [(verdict, scene)]
            where = verdict.position == scene.position
            images.append({"caption": scene.caption, "seed": seed, **verdict.as_dict()})
        ok = where
        for verdict, wanted in read:
            objects += 1
            ious.append(verdict.iou)
            for name in right:
                hit = getattr(verdict, name) == getattr(wanted, name)
                right[name] += hit
                ok = ok and hit
        placed += where
        every += ok
        flat += read[0][0].background_std <= 3.0
    figures = {
        "median_iou": float(statistics.median(ious)),
        "iou_at_least_0.7": sum(v >= IOU_GOOD for v in ious) / objects,
        **{name: hits / objects for name, hits in right.items()},
        "position": placed / count,
        "all_attributes": every / count,
        "flat": flat / count,
        "seconds_per_image": float(statistics.median(times)),
    }
    return JudgeReport(count, steps, sampler, guidance, figures, images, size)
