"""Fine-tune only the VAE decoder of a trained dali-tiny file; the latent space stays as it is.

The UNet was trained on the frozen encoder's latents, so a better decoder needs no new UNet:
SD v1's released "ft-MSE" decoder was made the same way. The decoder learns to draw the
rendered image back from posterior samples of the frozen encoder, with the shape's pixels
weighted up (`shape_weight`): a small shape is a few percent of the pixels, and an unweighted
loss is content to draw it as a blob of the right colour.

With `samples` > 0 the decoder also learns from what it is handed in use: the model first draws
that many training captions, and `sampled_share` of each batch is those latents with the
renderings their captions allow as targets (`training.sampled_targets`). `background_weight`
weights the plain background beyond the ring: the UNet's latents leave a faint halo there that
a weight of 1 tolerates.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sd_core.checkpoint import checkpoint_state_dict, load_models, save_checkpoint
from training.batches import shape_weights, weighted_training_batch
from training.sampled_targets import SampledTargets, sample_targets
from training.train import images_to_tensor


def finetune_decoder(
    source: Path,
    target: Path,
    device: torch.device,
    steps: int = 2000,
    batch: int = 8,
    lr: float = 5e-4,
    shape_weight: float = 10.0,
    ring: int = 2,
    seed: int = 0,
    command: str = "",
    samples: int = 0,
    sample_steps: int = 20,
    sampled_share: float = 0.75,
    background_weight: float = 1.0,
    v2_share: float = 0.0,
) -> dict[str, Any]:
    """Train the decoder (and post_quant_conv) of `source`; write the result to `target`.

    `samples` > 0: first draw that many training captions with `source` (its default sampler
    and recorded guidance, `sample_steps` steps) and give `sampled_share` of every batch to
    them. `v2_share`: the share of the posterior samples' renders of v2 captions
    (`weighted_training_batch`); the drawings are of v1 captions only.
    Everything else in the file (text encoder, UNet, encoder, config, metadata) is kept, except
    the evaluation and judge records, which no longer describe the new file; a previous
    fine-tune's record is kept inside the new one (`previous`). Returns the run's record.
    """
    rng = np.random.default_rng([seed, 3])
    started = time.perf_counter()
    sampled = _draw_samples(source, device, samples, sample_steps, rng) if samples else None
    sampling_seconds = time.perf_counter() - started
    config, models, metadata = load_models(source, device=device, dtype=torch.float32)
    vae: Any = models["vae"]
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0, fused=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    smoothed = None
    use_sampled = sampled is not None and len(sampled.latents) > 0
    own = max(1, batch - round(batch * sampled_share)) if use_sampled else batch  # posterior
    bar = tqdm(range(steps), desc="decoder", unit="step", dynamic_ncols=True)
    for step in bar:
        images, weight_np = weighted_training_batch(rng, own, shape_weight, ring,
                                                    elsewhere=background_weight,
                                                    v2_share=v2_share)  # fmt: skip
        weight = torch.from_numpy(weight_np).to(device)[:, None]
        x = images_to_tensor(images, device)
        with torch.no_grad():
            mean, logvar = vae.encode(x)
            noise = torch.randn(mean.shape, generator=generator).to(device)
            z = mean + torch.exp(0.5 * logvar) * noise
        if sampled is not None and use_sampled and batch > own:
            picks = rng.integers(0, len(sampled.latents), size=batch - own)
            z = torch.cat([z, sampled.latents[torch.from_numpy(picks)].to(device)])
            x = torch.cat([x, images_to_tensor(sampled.images[picks], device)])
            drawn_weight = shape_weights(sampled.images[picks],
                                         [sampled.backgrounds[i] for i in picks],
                                         shape_weight, ring, background_weight)  # fmt: skip
            weight = torch.cat([weight, torch.from_numpy(drawn_weight).to(device)[:, None]])
        error = vae.decode(z) - x
        loss = (weight * (error.abs() + error.pow(2))).mean() / weight.mean()
        factor = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * step / steps))  # cosine to 10 %
        for group in optimizer.param_groups:
            group["lr"] = lr * factor
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        smoothed = loss.item() if smoothed is None else 0.98 * smoothed + 0.02 * loss.item()
        bar.set_postfix(loss=f"{smoothed:.4f}")
    bar.close()

    record = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "shape_weight": shape_weight,
        "ring": ring,
        "background_weight": background_weight,
        "v2_share": v2_share,
        "seed": seed,
        "final_loss": smoothed,
        "source": source.name,
        "command": command,
        "seconds": round(time.perf_counter() - started),
    }
    if sampled is not None:
        record["samples"] = {
            "drawn": sampled.drawn,
            "kept": len(sampled.latents),
            "steps": sample_steps,
            "share": sampled_share,
            "sampler": sampled.sampler,
            "guidance": sampled.guidance,
            "seconds": round(sampling_seconds),
        }
    if "dali_decoder_finetune" in metadata:  # a second fine-tune keeps the first one's record
        record["previous"] = json.loads(metadata["dali_decoder_finetune"])
    stale = ("dali_eval", "dali_judge", "dali_config", "format")  # no longer this file's figures
    meta = {k: v for k, v in metadata.items() if k not in stale}
    meta["dali_decoder_finetune"] = json.dumps(record)
    save_checkpoint(target, checkpoint_state_dict(models), config, meta, dtype=torch.float16)
    return record


def _draw_samples(
    source: Path, device: torch.device, count: int, steps: int, rng: np.random.Generator
) -> SampledTargets:
    """`count` drawings of training captions by `source` with its default sampler and the
    guidance its evaluation recorded (5 when it has none), paired with their targets."""
    import sd_core
    from sd_core.tensor_source import TensorSource

    pipe = sd_core.load_pipeline(source, device=str(device), dtype="float32")
    recorded = TensorSource(source).metadata.get("dali_eval")
    guidance = float(json.loads(recorded)["guidance"]) if recorded else 5.0
    sampler = pipe.config.default_sampler or "euler_a"
    return sample_targets(pipe, count, rng, steps, sampler, guidance)
