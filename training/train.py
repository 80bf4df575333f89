"""Train dali-tiny: the SD v1 architecture at a small width, on the shapes world.

Two phases, as latent diffusion is trained (Rombach et al. 2022):

1. **Autoencoder** (`vae`): reconstruct freshly rendered 64×64 images through the f=8 KL
   autoencoder (L1 + L2 reconstruction and a small KL term towards N(0, I)).
2. **Diffusion** (`diffusion`): a pool of training images is encoded once by the frozen encoder;
   its latent standard deviation gives the scale factor (SD v1's 0.18215 was found this way).
   Then the text encoder and the UNet are trained together with the DDPM objective (Ho et al.
   2020, Algorithm 1): draw x0 from the pool, t ~ U{0, …, T−1} and ε ~ N(0, I), noise
   x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε with SD's scaled-linear ᾱ, and regress ε̂(x_t, t, c) onto ε.
   A share of captions is replaced by the empty caption so that classifier-free guidance
   (Ho & Salimans 2022) has an unconditional model to push away from. An exponential moving
   average of the weights is what gets shipped.

Every random draw comes from one CPU `torch.Generator` and one numpy `Generator` seeded from the
run's seed, and both are saved in each checkpoint, so a resumed run continues the same sequence.
Checkpoints are written to a temporary file and renamed over the last one, so an interrupted
write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from sd_core.checkpoint import build_models, checkpoint_state_dict, save_checkpoint
from sd_core.config import ModelConfig
from sd_core.schedule import NoiseSchedule
from sd_core.tokenizer import CLIPTokenizer
from training.batches import pool_scenes, weighted_training_batch
from training.config import TrainConfig
from training.shapes import EVAL_SEED_BASE, render

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "dali-tiny.safetensors"
PHASES = ("vae", "diffusion", "trained")
_POOL_CHUNK = 256  # images rendered and encoded at a time when building the latent pool


class TrainingError(ValueError):
    """A run that cannot start or continue, with the reason and what to do in words."""


def images_to_tensor(images: np.ndarray, device: torch.device) -> Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 in [-1, 1] on `device`."""
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def config_to_json(config: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(config))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _init_weights(models: dict[str, nn.Module]) -> None:
    """CLIP's small embedding init, and zero init of the layers that end a residual branch (as
    LDM does in the UNet; here in the VAE too), so every block starts as the identity: a deep
    net that starts as a shallow one trains much faster in a few thousand steps."""
    text = models["text_encoder"]
    embeddings: Any = text.embeddings
    nn.init.normal_(embeddings.token_embedding.weight, std=0.02)
    nn.init.normal_(embeddings.position_embedding.weight, std=0.01)
    branch_ends = {
        "unet": ("out_layers.3", "proj_out"),
        "vae": ("conv2", "proj_out"),
    }
    for component, suffixes in branch_ends.items():
        for name, module in models[component].named_modules():
            if name.endswith(suffixes) or (component == "unet" and name == "out.2"):
                assert isinstance(module, nn.Conv2d | nn.Linear), name
                nn.init.zeros_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    # One multi-tensor op for all ~700 tensors: a per-tensor loop costs more than the math.
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


class Trainer:
    """One training run in the folder `out` (its checkpoint, logs and the final model file)."""

    def __init__(
        self, out: Path, config: TrainConfig, device: torch.device, command: str = ""
    ) -> None:
        self.out = out
        self.config = config
        self.device = device
        self.command = command
        torch.manual_seed(config.seed)  # weight init
        self.models = build_models(config.model, device=device)
        _init_weights(self.models)
        self.ema = {
            name: copy.deepcopy(self.models[name]).requires_grad_(False)
            for name in ("text_encoder", "unet")
        }
        # fused: one kernel for every parameter; the models are small enough that the
        # optimizer's per-tensor overhead would otherwise rival the forward pass.
        self.vae_opt = torch.optim.AdamW(
            self.models["vae"].parameters(), lr=config.vae_lr, weight_decay=0.0, fused=True
        )
        # Two groups: the text encoder learns at `text_lr_scale` × the UNet's rate (see
        # TrainConfig.text_lr_scale for why).
        self.opt = torch.optim.AdamW(
            [
                {
                    "params": list(self.models["text_encoder"].parameters()),
                    "lr_scale": config.text_lr_scale,
                },
                {"params": list(self.models["unet"].parameters()), "lr_scale": 1.0},
            ],
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=True,
        )
        self.phase = "vae"
        self.step = 0
        self.scale_factor = 0.0
        self.elapsed: dict[str, float] = {"vae": 0.0, "diffusion": 0.0}
        self.generator = torch.Generator("cpu").manual_seed(config.seed)
        self.np_rng = np.random.default_rng([config.seed, 1])
        self.tokenizer = CLIPTokenizer.default()
        schedule = NoiseSchedule(config.model.schedule)
        self.alphas_cumprod = schedule.alphas_cumprod.float().to(device)
        self.pool: dict[str, Tensor] = {}
        self.stop_requested = False  # set from a signal handler; honoured between steps

    def _diffusion_parameters(self) -> Iterable[nn.Parameter]:
        yield from self.models["text_encoder"].parameters()
        yield from self.models["unet"].parameters()

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def save(self) -> None:
        state = {
            "phase": self.phase,
            "step": self.step,
            "scale_factor": self.scale_factor,
            "elapsed": self.elapsed,
            "train_config": config_to_json(self.config),
            "command": self.command,
            "models": {name: model.state_dict() for name, model in self.models.items()},
            "ema": {name: model.state_dict() for name, model in self.ema.items()},
            "vae_opt": self.vae_opt.state_dict(),
            "opt": self.opt.state_dict(),
            "torch_rng": self.generator.get_state(),
            "numpy_rng": json.dumps(self.np_rng.bit_generator.state),
        }
        atomic_torch_save(state, self.checkpoint_path)

    def load(self) -> None:
        try:
            state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            raise TrainingError(f"cannot read checkpoint {str(self.checkpoint_path)!r}: {e}") from e
        for name, model in self.models.items():
            model.load_state_dict(state["models"][name])
        for name, model in self.ema.items():
            model.load_state_dict(state["ema"][name])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.opt.load_state_dict(state["opt"])
        self.phase, self.step = state["phase"], int(state["step"])
        self.scale_factor = float(state["scale_factor"])
        self.elapsed = dict(state["elapsed"])
        self.generator.set_state(state["torch_rng"].cpu())
        self.np_rng.bit_generator.state = json.loads(state["numpy_rng"])

    # -- phase 1: the autoencoder ----------------------------------------------------------

    def _vae_step(self) -> float:
        cfg, vae = self.config, self.models["vae"]
        image_size = 128 if self._large_step() else 64
        images, weights = weighted_training_batch(
            self.np_rng,
            cfg.vae_batch,
            cfg.vae_shape_weight,
            image_size=image_size,
            v2_share=cfg.v2_share,
        )
        crop = cfg.vae_crop
        if crop < images.shape[1]:
            # Random crops on the latent grid: 4× cheaper than whole images at crop 32, and the
            # autoencoder is convolutional, so it learns the same local job.
            cells = (images.shape[1] - crop) // 8 + 1
            ys, xs = 8 * self.np_rng.integers(0, cells, size=(2, len(images)))
            images = np.stack(
                [im[y : y + crop, x : x + crop] for im, y, x in zip(images, ys, xs, strict=True)]
            )
            weights = np.stack(
                [w[y : y + crop, x : x + crop] for w, y, x in zip(weights, ys, xs, strict=True)]
            )
        x = images_to_tensor(images, self.device)
        w = torch.from_numpy(weights).float().to(self.device)[:, None]
        for group in self.vae_opt.param_groups:
            group["lr"] = cfg.vae_lr * _lr_factor(self.step, cfg.vae_steps, cfg.warmup_steps)
        mean, logvar = vae.encode(x)  # type: ignore[operator]
        noise = torch.randn(mean.shape, generator=self.generator).to(self.device)
        z = mean + torch.exp(0.5 * logvar) * noise
        recon = vae.decode(z)  # type: ignore[operator]
        error = recon - x
        # Weighted L1 + L2, normalised by the mean weight so the scale matches the unweighted loss.
        rec_loss = (w * (error.abs() + error.pow(2))).mean() / w.mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        loss = rec_loss + cfg.kl_weight * kl
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip, foreach=True)
        self.vae_opt.step()
        return rec_loss.item()

    def _large_step(self) -> bool:
        """Whether this step trains on 128-px images (`TrainConfig.large_every`)."""
        every = self.config.large_every
        return every > 0 and self.step % every == every - 1

    # -- phase 2: text encoder + UNet ------------------------------------------------------

    @torch.no_grad()
    def build_pool(self) -> None:
        """Render `pool_size` training images (`pool_scenes`) and encode them once.

        The pool's own RNG is seeded from the run seed alone, so a resumed run rebuilds the
        same pool from the same autoencoder weights.
        """
        cfg, vae = self.config, self.models["vae"]
        vae.eval()
        rng = np.random.default_rng([cfg.seed, 2])
        scenes = pool_scenes(cfg.pool_size, cfg.seed, cfg.v2_share)
        seeds = rng.integers(0, EVAL_SEED_BASE, size=len(scenes))
        means, logvars = [], []
        for start in range(0, len(scenes), _POOL_CHUNK):
            chunk = range(start, min(start + _POOL_CHUNK, len(scenes)))
            images = np.stack([render(scenes[i], int(seeds[i])) for i in chunk])
            mean, logvar = vae.encode(images_to_tensor(images, self.device))  # type: ignore[operator]
            means.append(mean)
            logvars.append(logvar)
        ids = self.tokenizer.encode_batch([s.caption for s in scenes]).to(self.device)
        self.pool = {"mean": torch.cat(means), "logvar": torch.cat(logvars), "ids": ids}
        self.pool["empty"] = self.tokenizer.encode_batch([""]).to(self.device)
        if cfg.large_every and cfg.large_pool_size:
            # The 128-px pool: its own seeded RNG, `pool_scenes`, 64 images encoded at a time.
            large_rng = np.random.default_rng([cfg.seed, 4])
            large = pool_scenes(cfg.large_pool_size, cfg.seed, cfg.v2_share, stream=6)
            large_seeds = large_rng.integers(0, EVAL_SEED_BASE, size=len(large))
            means, logvars = [], []
            for start in range(0, len(large), 64):
                chunk = range(start, min(start + 64, len(large)))
                images = np.stack([render(large[i], int(large_seeds[i]), 128) for i in chunk])
                mean, logvar = vae.encode(images_to_tensor(images, self.device))  # type: ignore[operator]
                means.append(mean)
                logvars.append(logvar)
            self.pool["large_mean"] = torch.cat(means)
            self.pool["large_logvar"] = torch.cat(logvars)
            self.pool["large_ids"] = self.tokenizer.encode_batch([s.caption for s in large]).to(
                self.device
            )

    @torch.no_grad()
    def measure_scale_factor(self) -> float:
        """1 / the standard deviation of posterior samples over the pool (unit-variance latents)."""
        mean, logvar = self.pool["mean"], self.pool["logvar"]
        noise = torch.randn(mean.shape, generator=self.generator).to(self.device)
        return 1.0 / float((mean + torch.exp(0.5 * logvar) * noise).std())

    def _diffusion_step(self) -> float:
        cfg, pool, gen, dev = self.config, self.pool, self.generator, self.device
        text_encoder, unet = self.models["text_encoder"], self.models["unet"]
        prefix = "large_" if self._large_step() and "large_ids" in pool else ""
        idx = torch.randint(len(pool[prefix + "ids"]), (cfg.unet_batch,), generator=gen).to(dev)
        mean, logvar = pool[prefix + "mean"][idx], pool[prefix + "logvar"][idx]
        posterior_noise = torch.randn(mean.shape, generator=gen).to(dev)
        x0 = (mean + torch.exp(0.5 * logvar) * posterior_noise) * self.scale_factor
        t = torch.randint(len(self.alphas_cumprod), (cfg.unet_batch,), generator=gen).to(dev)
        eps = torch.randn(x0.shape, generator=gen).to(dev)
        alpha_bar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * eps  # q(x_t | x_0)
        ids = pool[prefix + "ids"][idx]
        dropped = (torch.rand(cfg.unet_batch, generator=gen) < cfg.caption_dropout).to(dev)
        ids = torch.where(dropped[:, None], pool["empty"], ids)
        factor = _lr_factor(self.step, cfg.unet_steps, cfg.warmup_steps)
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * group["lr_scale"] * factor
        eps_hat = unet(x_t, t.float(), text_encoder(ids))
        loss = F.mse_loss(eps_hat, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(list(self._diffusion_parameters()), cfg.grad_clip, foreach=True)
        self.opt.step()
        # The average starts short and lengthens, so early EMA weights are not the random init.
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
        _ema_update(self.ema["text_encoder"], text_encoder, decay)
        _ema_update(self.ema["unet"], unet, decay)
        return loss.item()

    # -- the loop --------------------------------------------------------------------------

    def _run_phase(self, phase: str, total: int, step_fn: Any, log: Any) -> None:
        cfg = self.config
        bar = tqdm(total=total, initial=self.step, desc=phase, unit="step", dynamic_ncols=True)
        smoothed: float | None = None
        started = time.perf_counter() - self.elapsed[phase]
        try:
            while self.step < total:
                loss = step_fn()
                smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{smoothed:.4f}")
                self.elapsed[phase] = time.perf_counter() - started
                if (
                    self.step % cfg.checkpoint_every == 0
                    or self.step == total
                    or (self.stop_requested)
                ):
                    self.save()
                    log(
                        {
                            "phase": phase,
                            "step": self.step,
                            "loss": smoothed,
                            "seconds": round(self.elapsed[phase], 1),
                        }
                    )
                if self.stop_requested:
                    return
        finally:
            bar.close()

    def train(self, log: Any = None) -> None:
        """Run (or continue) both phases to the end; the state after each is checkpointed."""
        log = log or (lambda record: None)
        cfg = self.config
        for model in self.models.values():
            # Eval mode while training, on purpose: the only layers that differ between the
            # modes are the UNet's Dropout slots, kept for key parity with SD and built with
            # torch's default p=0.5; SD v1 trains with no dropout, and so do we.
            model.eval()
        if self.phase == "vae":
            self._run_phase("vae", cfg.vae_steps, self._vae_step, log)
            if self.stop_requested:
                return
            self.phase, self.step = "diffusion", 0
            self.models["vae"].requires_grad_(False)
            self.build_pool()
            self.scale_factor = self.measure_scale_factor()
            self.save()
            log(
                {
                    "phase": "pool",
                    "images": len(self.pool["ids"]),
                    "scale_factor": self.scale_factor,
                }
            )
        if self.phase == "diffusion":
            self.models["vae"].requires_grad_(False)
            if not self.pool:
                self.build_pool()
            self._run_phase("diffusion", cfg.unet_steps, self._diffusion_step, log)
            if self.stop_requested:
                return
            self.phase, self.step = "trained", 0
            self.save()

    def model_config(self, default_sampler: str | None = None) -> ModelConfig:
        """The shipped model's config: the measured latent scale (and the chosen sampler)."""
        model = self.config.model
        vae = dataclasses.replace(model.vae, scale_factor=round(self.scale_factor, 5))
        return dataclasses.replace(
            model, vae=vae, default_sampler=default_sampler or model.default_sampler
        )

    def export(
        self, path: Path, default_sampler: str | None = None, metadata: dict[str, str] | None = None
    ) -> Path:
        """Write the model (EMA text encoder and UNet, the VAE) in the original SD layout, fp16."""
        if self.phase != "trained":
            raise TrainingError(f"cannot export: the run is still in phase {self.phase!r}")
        models = {
            "text_encoder": self.ema["text_encoder"],
            "vae": self.models["vae"],
            "unet": self.ema["unet"],
        }
        meta = {
            "dali_name": self.config.model.name,
            "dali_description": "built-in: shapes only (trained by `python -m training`)",
            "dali_training_command": self.command,
            "dali_train_config": json.dumps(
                {k: v for k, v in dataclasses.asdict(self.config).items() if k != "model"}
            ),
            "dali_training_seconds": json.dumps({k: round(v) for k, v in self.elapsed.items()}),
            **(metadata or {}),
        }
        return save_checkpoint(
            path,
            checkpoint_state_dict(models),
            self.model_config(default_sampler),
            meta,
            dtype=torch.float16,
        )


def train_config_from_json(text: str) -> TrainConfig:
    """The inverse of `config_to_json` (lists become tuples, nested configs dataclasses)."""

    def build(cls: Any, values: dict[str, Any]) -> Any:
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue
            value = values[f.name]
            if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
                value = build(type(f.default_factory()), value)
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)

    return build(TrainConfig, json.loads(text))  # type: ignore[no-any-return]


def open_run(
    out: Path,
    device: torch.device,
    config: TrainConfig | None = None,
    resume: bool = False,
    command: str = "",
    overrides: dict[str, Any] | None = None,
) -> Trainer:
    """A trainer for a new run in `out` with `config`, or for the run saved there (`resume`).

    A new run refuses a folder that already holds a checkpoint (so nothing is overwritten by
    mistake). Resuming refuses a folder without one, and takes the settings saved in it;
    `overrides` (the flags given again) must agree with them, except that `unet_steps` may grow
    (this extends the diffusion phase, also of a finished run).
    """
    checkpoint = out / CHECKPOINT_NAME
    done_diffusion = 0
    if resume:
        if not checkpoint.is_file():
            raise TrainingError(
                f"--resume: no checkpoint at {str(checkpoint)!r}; "
                "start the run there without --resume"
            )
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        config = train_config_from_json(saved["train_config"])
        done_diffusion = config.unet_steps
        extended = False
        for name, value in (overrides or {}).items():
            if getattr(config, name) == value:
                continue
            if name == "unet_steps" and value > config.unet_steps:
                # Extending a run: its cosine schedule continues as if planned for the new total.
                config = dataclasses.replace(config, unet_steps=value)
                extended = True
                continue
            raise TrainingError(
                f"--resume: the run in {str(out)!r} has {name}={getattr(config, name)!r}, "
                f"not {value!r}; resume without that flag (only --unet-steps may grow) "
                "or start a new run"
            )
        first_command = saved.get("command", "")
        if extended and first_command:
            command = f"{first_command} ; extended by: {command}"
        else:
            command = first_command or command
    elif checkpoint.exists():
        raise TrainingError(
            f"--out {str(out)!r} already holds a run; pass --resume to continue it "
            "or choose another --out"
        )
    if config is None:
        raise TrainingError("a new run needs a TrainConfig")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(out, config, device, command)
    if resume:
        trainer.load()
        if trainer.phase == "trained" and config.unet_steps > done_diffusion:
            trainer.phase, trainer.step = "diffusion", done_diffusion
    return trainer
