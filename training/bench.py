"""How long would a training run take here? Time a few steps of each part, multiply.

`python -m training bench --train --threads 2` times the autoencoder step, the pool encoding,
the diffusion step, one evaluation image (random weights: speed does not depend on them) and
the detector, each after a warm-up, and multiplies by the counts of `TrainConfig()`: the f=8
`dali-tiny` recipe's `train` and evaluation (no 128-px steps, decoder phase or judge, so not the
shipped `dali-tiny-v2` recipe, whose measured phases are in docs/dali-tiny.md). It is an
estimate: on a machine shared with other work it reads high, and it says how many threads ran.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig
from training.detector import detect
from training.shapes import held_out_scenes, render


def _seconds(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def estimate_training(
    config: TrainConfig, device: torch.device, repeat: int = 10
) -> dict[str, Any]:
    """Seconds per unit of each part of a run of `config` on `device`, and the projected total."""
    import sd_core
    from training import evaluate as ev
    from training.train import Trainer

    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(Path(folder), config, device)
        for model in trainer.models.values():
            model.eval()  # as in Trainer.train
        vae_step = _seconds(trainer._vae_step, repeat)

        pool_images = 256
        small = Trainer(
            Path(folder), TrainConfig(pool_size=pool_images, model=config.model), device
        )
        started = time.perf_counter()
        small.build_pool()
        pool_image = (time.perf_counter() - started) / pool_images

        trainer.pool, trainer.scale_factor = small.pool, small.measure_scale_factor()
        unet_step = _seconds(trainer._diffusion_step, repeat)

        trainer.phase = "trained"
        path = trainer.export(Path(folder) / "random.safetensors")
        pipe = sd_core.load_pipeline(path, device=str(device), dtype="float32")
        image = ev.benchmark(pipe, config.eval_steps, config.model.default_sampler, 5.0, repeat=3)
        scene = held_out_scenes()[0]
        picture = render(scene, 0)
        detector = _seconds(lambda: detect(picture), repeat)

    eval_images = (
        config.tune_count * len(config.tune_samplers) * len(config.tune_guidance)
        + config.eval_count
        + 3 * 8  # variation checks
    )
    parts = {
        "vae": config.vae_steps * vae_step,
        "pool": config.pool_size * pool_image,
        "diffusion": config.unet_steps * unet_step,
        "evaluation": eval_images * (image + detector),
    }
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "seconds_per_vae_step": round(vae_step, 4),
        "seconds_per_pool_image": round(pool_image, 5),
        "seconds_per_diffusion_step": round(unet_step, 4),
        "seconds_per_image_20_steps": round(image, 4),
        "seconds_per_detection": round(detector, 5),
        "projected_seconds": {k: round(v) for k, v in parts.items()},
        "projected_total_minutes": round(sum(parts.values()) / 60, 1),
        "steps": {
            "vae": config.vae_steps,
            "diffusion": config.unet_steps,
            "pool_images": config.pool_size,
            "eval_images": eval_images,
        },
    }
