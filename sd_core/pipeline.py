"""Text-to-image, image-to-image and inpainting: check inputs → encode → sample → decode.

Noise convention (DESIGN.md §2): image i of a batch has seed `seed + i` and its own CPU
generator; every random draw for that image (VAE posterior sample, initial noise, a stochastic
sampler's step noise) comes from that generator, in the order diffusers draws it. So any image
of a batch can be made again alone, the same seed gives the same image on every device, and the
result equals diffusers' pipelines given the same weights and that list of CPU generators.
"""

from __future__ import annotations

import json
import math
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sd_core import BUILTIN_MODEL_NAME, BUILTIN_MODEL_PATH, GenerationCancelled
from sd_core.config import ModelConfig
from sd_core.devices import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from sd_core.clip import CLIPTextModel
    from sd_core.unet import UNetModel
    from sd_core.vae import AutoencoderKL

ModuleT = TypeVar("ModuleT", bound=nn.Module)
ProgressCallback = Callable[[int, int, Tensor], None]
CancelCheck = Callable[[], bool]
TraceCallback = Callable[[int, int, Tensor, Tensor], None]

MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 2048, 8
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_BATCH = 64
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationRequest:
    """Validated arguments of one `generate` call."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    sampler: str
    guidance: float
    width: int
    height: int
    batch: int
    strength: float


def _check_int(name: str, value: Any, low: int, high: int, extra: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer from {low} to {high}{extra}, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be from {low} to {high}{extra}, got {value}")
    return int(value)


def _check_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name} must be a number from {low:g} to {high:g}, got {value!r}")
    f = float(value)
    if not (math.isfinite(f) and low <= f <= high):
        raise ValueError(f"{name} must be from {low:g} to {high:g}, got {value}")
    return f


def _check_size(name: str, value: Any) -> int:
    size = _check_int(name, value, MIN_SIZE, MAX_SIZE, f" and a multiple of {SIZE_MULTIPLE}")
    if size % SIZE_MULTIPLE:
        raise ValueError(
            f"{name} must be a multiple of {SIZE_MULTIPLE} from {MIN_SIZE} to {MAX_SIZE}, got {size}"
        )
    return size


def slerp(t: float, a: Tensor, b: Tensor) -> Tensor:
    """Spherical interpolation per image between noise tensors a and b (B, C, h, w)."""
    a_flat, b_flat = a.flatten(1), b.flatten(1)
    dot = (a_flat / a_flat.norm(dim=1, keepdim=True) * b_flat / b_flat.norm(dim=1, keepdim=True)).sum(1)
    omega = torch.acos(dot.clamp(-1.0, 1.0)).view(-1, 1, 1, 1)
    so = torch.sin(omega)
    safe = so.abs() > 1e-6
    mixed = (torch.sin((1.0 - t) * omega) * a + torch.sin(t * omega) * b) / torch.where(safe, so, 1.0)
    return torch.where(safe, mixed, (1.0 - t) * a + t * b)


def image_to_tensor(image: Image.Image, width: int, height: int) -> Tensor:
    """PIL image → (1, 3, height, width) float32 in [-1, 1], resized if needed."""
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


def mask_to_tensor(mask: Image.Image, width: int, height: int) -> Tensor:
    """PIL mask → (1, 1, height, width) float32 of 0/1; white (≥ 0.5) marks what to repaint."""
    mask = mask.convert("L")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.LANCZOS)
    array = np.asarray(mask, dtype=np.float32) / 255.0
    return (torch.from_numpy(array) >= 0.5).float()[None, None]


def tensor_to_images(images: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] → PIL images (rounded like diffusers' numpy_to_pil)."""
    array = (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


class StableDiffusionPipeline:
    """The three SD v1.x models, tokenizer and schedule, on one device in one dtype."""

    def __init__(
        self,
        config: ModelConfig,
        text_encoder: CLIPTextModel,
        vae: AutoencoderKL,
        unet: UNetModel,
        device: torch.device,
        dtype: torch.dtype,
        model_name: str = "model",
        model_hash: str = "",
        low_memory: bool = False,
    ) -> None:
        from sd_core.schedule import NoiseSchedule
        from sd_core.tokenizer import CLIPTokenizer

        self.config = config
        self.text_encoder = text_encoder
        self.vae = vae
        self.unet = unet
        self.device = device
        self.dtype = dtype
        self.model_name = model_name
        self.model_hash = model_hash
        self.low_memory = low_memory and device.type != "cpu"
        self.tokenizer = CLIPTokenizer.default()
        self.schedule = NoiseSchedule(config.schedule)
        # Models live on the CPU between uses in low-memory mode; else on the device.
        self._home = torch.device("cpu") if self.low_memory else device
        for model in (text_encoder, vae, unet):
            model.to(self._home)
        if device.type == "cpu":
            # oneDNN's convolutions run faster on NHWC: measured on 16 CPU cores at SD v1.5 shapes,
            # UNet 1.97 → 1.73 s and VAE decode 3.04 → 2.50 s (docs/benchmarks.md).
            unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            vae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        low_memory: bool = False,
    ) -> StableDiffusionPipeline:
        from sd_core.checkpoint import CheckpointError, file_sha256, load_models

        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        path = Path(checkpoint) if checkpoint is not None else BUILTIN_MODEL_PATH
        if checkpoint is None and not path.exists():
            raise CheckpointError(
                f"the built-in model is missing at {str(path)!r}; pass checkpoint=PATH or restore it"
            )
        load_device = torch.device("cpu") if low_memory and dev.type != "cpu" else dev
        config, models, metadata = load_models(path, device=load_device, dtype=dt)
        name = metadata.get("dali_name") or (
            BUILTIN_MODEL_NAME if path.resolve() == BUILTIN_MODEL_PATH.resolve() else path.stem
        )
        return cls(
            config,
            cast("CLIPTextModel", models["text_encoder"]),
            cast("AutoencoderKL", models["vae"]),
            cast("UNetModel", models["unet"]),
            device=dev,
            dtype=dt,
            model_name=name,
            model_hash=file_sha256(path)[:10],
            low_memory=low_memory,
        )

    # -- helpers ---------------------------------------------------------------------------

    def _use(self, model: ModuleT) -> ModuleT:
        if self.low_memory:
            model.to(self.device)
        return model

    def _release(self, model: nn.Module) -> None:
        if self.low_memory:
            model.to(self._home)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def latent_scale(self) -> float:
        return self.config.vae.scale_factor

    def encode_text(self, prompts: Sequence[str]) -> Tensor:
        """Prompts → (B, 77, width) text-encoder hidden states in the pipeline dtype."""
        for prompt in set(prompts):
            n = self.tokenizer.count_tokens(prompt)
            limit = self.config.clip.max_positions - 2
            if n > limit:
                warnings.warn(
                    f"prompt has {n} tokens; only the first {limit} are used", stacklevel=3
                )
        ids = self.tokenizer.encode_batch(list(prompts)).to(self.device)
        encoder = self._use(self.text_encoder)
        hidden = encoder(ids)
        self._release(encoder)
        return hidden

    def encode_image(self, image: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
        """(1, 3, H, W) in [-1, 1] → (B, C, H/8, W/8) scaled latents, one posterior sample per
        generator (diffusers' `latent_dist.sample(generator)`)."""
        vae = self._use(self.vae)
        mean, logvar = vae.encode(image.to(self.device, self.dtype))
        self._release(vae)
        std = torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))
        samples = [
            mean.float() + std * torch.randn(mean.shape, generator=g).to(self.device)
            for g in generators
        ]
        return torch.cat(samples) * self.latent_scale

    def decode_latents(self, latents: Tensor) -> Tensor:
        """(B, C, h, w) scaled latents → (B, 3, 8h, 8w) float32 images in [-1, 1] (unclamped)."""
        vae = self._use(self.vae)
        out = torch.cat(
            [vae.decode(z.unsqueeze(0).to(self.dtype) / self.latent_scale) for z in latents]
        )
        self._release(vae)
        return out.float()

    def preview_images(self, latents: Tensor) -> list[Image.Image]:
        """Small RGB previews of latents: a real decode for small models, else the cheap
        linear approximation."""
        from sd_core.preview import latents_to_rgb

        if self.config.native_size <= 128:
            return tensor_to_images(self.decode_latents(latents))
        return latents_to_rgb(latents)

    # -- the main entry point --------------------------------------------------------------

    def validate(
        self,
        prompt: Any,
        negative_prompt: Any,
        seed: Any,
        steps: Any,
        sampler: Any,
        guidance: Any,
        width: Any,
        height: Any,
        batch: Any,
        strength: Any,
    ) -> GenerationRequest:
        from sd_core.samplers import get_sampler

        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(negative_prompt, str):
            raise ValueError(
                f"negative_prompt must be a string, got {type(negative_prompt).__name__}"
            )
        if seed is None or (isinstance(seed, int) and not isinstance(seed, bool) and seed == -1):
            seed = secrets.randbelow(2**32)
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=_check_int("seed", seed, 0, MAX_SEED, " (or -1/None for random)"),
            steps=_check_int("steps", steps, 1, MAX_STEPS),
            sampler=get_sampler(sampler or self.config.default_sampler).name,
            guidance=_check_float("guidance", guidance, 0.0, MAX_GUIDANCE),
            width=_check_size("width", self.config.native_size if width is None else width),
            height=_check_size("height", self.config.native_size if height is None else height),
            batch=_check_int("batch", batch, 1, MAX_BATCH),
            strength=_check_float("strength", strength, 0.0, 1.0),
        )

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: int | None = None,
        steps: int = 20,
        sampler: str | None = None,
        guidance: float = 7.0,
        width: int | None = None,
        height: int | None = None,
        batch: int = 1,
        init_image: Image.Image | None = None,
        strength: float = 0.75,
        mask: Image.Image | None = None,
        callback: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        variation_seed: int | None = None,
        variation_strength: float = 0.0,
        trace: TraceCallback | None = None,
    ) -> list[Image.Image]:
        """Generate `batch` images; image i has seed `seed + i`.

        Returns PIL images carrying `info["parameters"]` (AUTOMATIC1111 infotext),
        `info["dali"]` (JSON) and `info["seed"]`. Raises ValueError for bad arguments and
        GenerationCancelled when `cancel()` turns True (checked before every model call).
        `variation_seed`/`variation_strength` blend the initial noise towards another seed's
        (AUTOMATIC1111's variation seeds: spherical interpolation). `trace(step, total, x,
        denoised)` sees the noisy latent and the predicted x0 after every step.
        """
        req, latents = self.generate_latents(
            prompt, negative_prompt, seed, steps, sampler, guidance, width, height, batch,
            init_image, strength, mask, callback, cancel, variation_seed, variation_strength, trace,
        )
        images = tensor_to_images(self.decode_latents(latents))
        mode = "inpaint" if mask is not None else "img2img" if init_image is not None else "txt2img"
        for i, image in enumerate(images):
            self._annotate(image, req, req.seed + i, mode, init_image is not None)
        return images

    @torch.inference_mode()
    def generate_latents(
        self,
        prompt: str,
        negative_prompt: str = "",
        seed: int | None = None,
        steps: int = 20,
        sampler: str | None = None,
        guidance: float = 7.0,
        width: int | None = None,
        height: int | None = None,
        batch: int = 1,
        init_image: Image.Image | None = None,
        strength: float = 0.75,
        mask: Image.Image | None = None,
        callback: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
        variation_seed: int | None = None,
        variation_strength: float = 0.0,
        trace: TraceCallback | None = None,
    ) -> tuple[GenerationRequest, Tensor]:
        """`generate` without the decode: (validated request, (B, C, H/8, W/8) scaled latents)."""
        req = self.validate(
            prompt, negative_prompt, seed, steps, sampler, guidance, width, height, batch, strength
        )
        if mask is not None and init_image is None:
            raise ValueError("mask needs an init_image to inpaint; got a mask without init_image")
        if init_image is not None and not isinstance(init_image, Image.Image):
            raise ValueError(f"init_image must be a PIL image, got {type(init_image).__name__}")
        if mask is not None:
            assert init_image is not None
            if not isinstance(mask, Image.Image):
                raise ValueError(f"mask must be a PIL image, got {type(mask).__name__}")
            if mask.size != init_image.size:
                raise ValueError(
                    f"mask size {mask.size[0]}x{mask.size[1]} must equal init_image size "
                    f"{init_image.size[0]}x{init_image.size[1]}"
                )
        if self.config.unet.in_channels == 9 and mask is None:
            raise ValueError(
                "this is an inpainting checkpoint (UNet in_channels 9): it needs init_image and mask"
            )
        variation = None
        if variation_seed is not None:
            variation = (
                _check_int("variation_seed", variation_seed, 0, MAX_SEED),
                _check_float("variation_strength", variation_strength, 0.0, 1.0),
            )
        return req, self._run(req, init_image, mask, callback, cancel, variation, trace)

    def _run(
        self,
        req: GenerationRequest,
        init_image: Image.Image | None,
        mask_image: Image.Image | None,
        callback: ProgressCallback | None,
        cancel: CancelCheck | None,
        variation: tuple[int, float] | None = None,
        trace: TraceCallback | None = None,
    ) -> Tensor:
        from sd_core.samplers import get_sampler

        spec = get_sampler(req.sampler)
        h, w = req.height // 8, req.width // 8
        channels = self.config.vae.embed_dim
        generators = [torch.Generator("cpu").manual_seed(req.seed + i) for i in range(req.batch)]

        def noise() -> Tensor:
            draws = [torch.randn((1, channels, h, w), generator=g) for g in generators]
            return torch.cat(draws).to(self.device)

        def check_cancel() -> None:
            if cancel is not None and cancel():
                raise GenerationCancelled("generation canceled")

        check_cancel()
        use_cfg = req.guidance > 1.0
        cond = self.encode_text([req.prompt] * req.batch)
        uncond = self.encode_text([req.negative_prompt] * req.batch) if use_cfg else None
        context = torch.cat([uncond, cond]) if uncond is not None else cond

        sigmas = spec.sigmas(self.schedule, req.steps).to(self.device, torch.float32)
        init_latents: Tensor | None = None
        image_tensor: Tensor | None = None
        if init_image is not None:
            image_tensor = image_to_tensor(init_image, req.width, req.height)
        inpaint_9ch = self.config.unet.in_channels == 9
        blend_mask: Tensor | None = None
        extra_channels: Tensor | None = None

        # Random draws per image, in diffusers' order: [image posterior], noise, [masked image posterior].
        if image_tensor is not None and not (inpaint_9ch and req.strength >= 1.0):
            init_latents = self.encode_image(image_tensor, generators)
        start_noise = noise()
        if variation is not None and variation[1] > 0:
            # Image i blends towards the noise of variation seed + i (AUTOMATIC1111's subseed).
            other = torch.cat(
                [
                    torch.randn((1, channels, h, w), generator=torch.Generator("cpu").manual_seed(variation[0] + i))
                    for i in range(req.batch)
                ]
            ).to(self.device)
            start_noise = slerp(variation[1], start_noise, other)
        sample = spec.fn
        # img2img always starts from the noised image; inpainting at full strength from pure noise.
        if init_latents is not None and (mask_image is None or req.strength < 1.0):
            if req.strength > 0:
                plan = spec.img2img(self.schedule, req.steps, req.strength)
                sigmas, sample = plan.sigmas.to(self.device, torch.float32), plan.fn
            else:  # nothing to denoise: the image's own latents
                sigmas = sigmas[-1:]
            x = init_latents + start_noise * sigmas[0]
        else:
            x = start_noise * spec.initial_noise_scale(sigmas)
        if mask_image is not None:
            assert image_tensor is not None
            mask = mask_to_tensor(mask_image, req.width, req.height)
            latent_mask = torch.nn.functional.interpolate(mask, size=(h, w)).to(self.device)
            if inpaint_9ch:
                masked = image_tensor * (mask < 0.5)
                masked_latents = self.encode_image(masked, generators)
                extra_channels = torch.cat(
                    [latent_mask.expand(req.batch, -1, -1, -1), masked_latents], dim=1
                )
            else:
                blend_mask = latent_mask

        unet = self._use(self.unet)
        total = len(sigmas) - 1
        # The UNet timestep for each σ exactly as diffusers feeds it with this sampler.
        to_t = spec.timestep_fn(self.schedule, req.steps)

        def denoise(x_in: Tensor, sigma: Tensor) -> Tensor:
            check_cancel()
            sigma = sigma.reshape(-1).expand(x_in.shape[0]) if sigma.numel() == 1 else sigma
            t = to_t(sigma).to(self.device, torch.float32)
            scale = (sigma.float() ** 2 + 1).rsqrt().view(-1, 1, 1, 1)
            model_in = x_in * scale
            if extra_channels is not None:
                model_in = torch.cat([model_in, extra_channels.to(model_in.dtype)], dim=1)
            if use_cfg:
                model_in, t = torch.cat([model_in, model_in]), torch.cat([t, t])
            eps = unet(model_in.to(self.dtype), t, context).float()
            if use_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + req.guidance * (eps_cond - eps_uncond)
            return x_in - sigma.float().view(-1, 1, 1, 1) * eps

        def on_step(step: int, n: int, x_now: Tensor, denoised: Tensor) -> None:
            if blend_mask is not None and init_latents is not None and step < n:
                # Inpainting a regular checkpoint: keep the unmasked area on the init image's
                # noised trajectory (diffusers' latent blending), in place so sampling continues from it.
                noised = init_latents + start_noise * sigmas[step]
                x_now.mul_(blend_mask).add_((1 - blend_mask) * noised)
            if trace is not None:
                trace(step, n, x_now, denoised)
            if callback is not None:
                callback(step, n, denoised)
            check_cancel()

        try:
            if total == 0:
                result = x
            else:
                result = sample(denoise, x, sigmas, noise=noise, callback=on_step)
        finally:
            self._release(unet)
        if blend_mask is not None and init_latents is not None:
            result = (1 - blend_mask) * init_latents + blend_mask * result
        return result

    def _annotate(
        self, image: Image.Image, req: GenerationRequest, seed: int, mode: str, img2img: bool
    ) -> None:
        from sd_core.infotext import GenerationParameters, format_infotext
        from sd_core.samplers import get_sampler

        spec = get_sampler(req.sampler)
        params = GenerationParameters(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            steps=req.steps,
            sampler=spec.display_name,
            cfg_scale=req.guidance,
            seed=seed,
            width=req.width,
            height=req.height,
            model_hash=self.model_hash,
            model=self.model_name,
            denoising_strength=req.strength if img2img else None,
        )
        image.info["parameters"] = format_infotext(params)
        image.info["seed"] = seed
        image.info["dali"] = json.dumps(
            {
                "prompt": req.prompt,
                "negative_prompt": req.negative_prompt,
                "steps": req.steps,
                "sampler": spec.name,
                "sampler_display_name": spec.display_name,
                "guidance": req.guidance,
                "seed": seed,
                "width": req.width,
                "height": req.height,
                "mode": mode,
                "strength": req.strength if img2img else None,
                "model": self.model_name,
                "model_hash": self.model_hash,
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
            }
        )
