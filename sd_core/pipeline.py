"""Text-to-image, image-to-image and inpainting: check inputs → encode → sample → decode.

`StableDiffusionPipeline.generate(params, *, init_image, mask, hooks)` runs four named stages,
each a short method below: the text conditioning (`encode_text`), the starting latent for
txt2img / img2img / inpainting (`sd_core/start.py`), the denoiser with classifier-free guidance
(`_denoiser`) driven by the sampler with the step hooks (`_sample`), and the VAE decode
(`decode_latents`). It returns a `GenerationResult` whose images carry their metadata.

Noise convention (docs/architecture.md, "Seeds and noise"): image i of a batch has seed
`seed + i` and its own CPU generator; every random draw for that image (VAE posterior sample,
initial noise, a stochastic sampler's step noise) comes from that generator, in the order
diffusers draws it. So any image of a batch can be made again alone, the same seed gives the
same image on every device, and the result equals diffusers' pipelines given the same weights
and that list of CPU generators.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import torch
from PIL import Image
from torch import Tensor, nn

from sd_core import BUILTIN_MODEL_NAME, BUILTIN_MODEL_PATH, GenerationCancelled, shapes_grammar
from sd_core.config import ModelConfig
from sd_core.devices import resolve_device, resolve_dtype
from sd_core.extra_networks import PromptNetworks, prompt_networks
from sd_core.hooks import GenerationHooks as GenerationHooks
from sd_core.hooks import Interrupted, interrupted_warning
from sd_core.image_tensors import (
    check_images,
    tensor_to_images,
)
from sd_core.inpaint import Inpainting, prepare
from sd_core.params import GenerationParams, InvalidParam
from sd_core.result import (
    IMG2IMG,
    GenerationResult,
    GenerationTimings,
    UsedAsset,
)
from sd_core.start import Start, noise, starting_latent
from sd_core.tiled_vae import VaeTiling, vae_encode
from sd_core.tiling import tiling_aware
from sd_core.vae_files import LoadedVae
from sd_core.vae_upcast import decode_finite

if TYPE_CHECKING:
    from sd_core.assets import Assets
    from sd_core.clip import CLIPTextModel
    from sd_core.conditioning import EncodedPrompts
    from sd_core.embeddings import Embedding
    from sd_core.fast_path import FastPath
    from sd_core.file_library import FileLibrary
    from sd_core.hires import UpscaleImage
    from sd_core.samplers import SamplerSpec
    from sd_core.unet import UNetModel
    from sd_core.vae import AutoencoderKL

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class SampledLatents:
    """What `sample_latents` made: the resolved params, the mode (txt2img, img2img, inpaint), the
    final (B, C, h, w) latents, the VAE that decodes them, the seconds text encoding and
    sampling took, the warnings."""

    params: GenerationParams
    mode: str
    latents: Tensor
    vae: AutoencoderKL
    text_encoding_s: float
    sampling_s: float
    warnings: tuple[str, ...]
    assets: tuple[UsedAsset, ...]
    inpainting: Inpainting | None = None  # what pasting the results back needs
    # (steps done, steps in the run) when `hooks.interrupt` ended it early; `latents` are then
    # the last step's predicted x0.
    interrupted: tuple[int, int] | None = None


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
        # Textual-inversion embeddings that prompts may name (None: none installed).
        self.embeddings: FileLibrary[Embedding] | None = None
        self.assets: Assets | None = None  # where prompts' LoRAs and params' VAE are found
        self.separate_vae = LoadedVae()
        # A model upscaler the hires fix may name (sd_core/hires.py); None: the built-in ones.
        self.upscale_image: UpscaleImage | None = None
        self.vae_tiling = VaeTiling()  # above which size decode_latents decodes in tiles
        self.fast_path: FastPath | None = None  # set by sd_core.fast_path.apply_fast_path
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

    def use_assets(self, assets: Assets) -> None:
        """Find the LoRAs and embeddings that prompts name, and the VAE files that params'
        `vae` names, in `assets` (without it a prompt's LoRA is left out with a warning)."""
        self.assets = assets
        self.embeddings = assets.embeddings
        if assets.folders.upscalers is not None:  # the hires fix's model upscalers
            from sd_core.upscalers import upscale_image

            self.upscale_image = functools.partial(upscale_image, folder=assets.folders.upscalers)

    # -- helpers ---------------------------------------------------------------------------

    def on_device(self, model: ModuleT) -> ModuleT:
        """`model` on the pipeline's device for a stage's work; with `low_memory` the models
        live on the CPU between stages and `off_device` sends them back."""
        if self.low_memory:
            model.to(self.device)
        return model

    def off_device(self, model: nn.Module) -> None:
        """Back home after `on_device` (a no-op unless `low_memory`)."""
        if self.low_memory:
            model.to(self._home)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def latent_scale(self) -> float:
        return self.config.vae.scale_factor

    def encode_text(self, prompts: Sequence[str], clip_skip: int = 1) -> EncodedPrompts:
        """Prompts in AUTOMATIC1111's syntax → each one's (1, 77·n, width) hidden states (the
        same n for all) in the pipeline dtype, taken `clip_skip` − 1 layers before the last,
        with the warnings met and the embeddings of `self.embeddings` the prompts used (see
        `sd_core.conditioning`)."""
        from sd_core.conditioning import encode_prompts

        encoder = self.on_device(self.text_encoder)
        try:
            return encode_prompts(
                encoder, self.tokenizer, prompts, clip_skip, self.device, self.embeddings
            )
        finally:
            self.off_device(encoder)

    def vae_for(self, params: GenerationParams) -> AutoencoderKL:
        """The VAE `params.vae` names (a file in `assets.vaes`), or the checkpoint's own.
        Raises InvalidParam("vae") when no such file is installed, VaeError when it is broken."""
        if params.vae is None:
            return self.vae
        found = self.assets.vaes.get(params.vae) if self.assets is not None else None
        if found is None:
            from sd_core.extra_networks import listed

            installed = self.assets.vaes.names() if self.assets is not None else []
            raise InvalidParam(
                "vae", params.vae,
                f"no VAE file named {params.vae!r} is installed (installed: {listed(installed)})",
            )  # fmt: skip
        return self.separate_vae.get(found, self.config.vae, self._home, self.dtype)

    def encode_image(
        self,
        image: Tensor,
        generators: Sequence[torch.Generator],
        vae: AutoencoderKL | None = None,
    ) -> Tensor:
        """(1, 3, H, W) in [-1, 1] → (B, C, H/8, W/8) scaled latents, one posterior sample per
        generator (diffusers' `latent_dist.sample(generator)`), with `vae` (the model's own)."""
        vae = self.on_device(vae or self.vae)
        mean, logvar = vae_encode(vae, image.to(self.device, self.dtype), self.vae_tiling)
        self.off_device(vae)
        std = torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))
        # One image for all generators, or (the hires fix) image i for generator i.
        pick = [(0, g) for g in generators] if len(mean) == 1 else list(enumerate(generators))
        samples = [
            mean[i : i + 1].float()
            + std[i : i + 1] * torch.randn(mean[i : i + 1].shape, generator=g).to(self.device)
            for i, g in pick
        ]
        return torch.cat(samples) * self.latent_scale

    def decode_latents(self, latents: Tensor, vae: AutoencoderKL | None = None) -> Tensor:
        """(B, C, h, w) scaled latents → (B, 3, 8h, 8w) float32 images in [-1, 1] (unclamped),
        decoded by `vae` (the model's own), in tiles above `vae_tiling`'s size; an image whose
        half-precision decode overflowed is decoded in float32 (`sd_core.vae_upcast`)."""
        vae, scale = self.on_device(vae or self.vae), self.latent_scale
        out = torch.cat(
            [decode_finite(vae, z[None].to(self.dtype) / scale, self.vae_tiling) for z in latents]
        )
        self.off_device(vae)
        return out.float()

    # -- the main entry point --------------------------------------------------------------

    @tiling_aware
    @torch.inference_mode()
    def generate(
        self,
        params: GenerationParams,
        *,
        init_image: Image.Image | None = None,
        mask: Image.Image | None = None,
        hooks: GenerationHooks | None = None,
    ) -> GenerationResult:
        """Make `params.batch` images; image i has seed `params.seed + i`.

        `init_image` makes it img2img (repainting `params.strength` of it), `mask` (white =
        repaint, the init image's size) inpainting. Raises ValueError naming the bad argument
        and GenerationCancelled when `hooks.cancel()` turns True. The result's images carry
        their metadata (`GenerationResult.annotate`).
        """
        return self.finish(self.sample_latents(params, init_image, mask, hooks))

    def finish(self, sampled: SampledLatents) -> GenerationResult:
        """Decode what `sample_latents` made (pasting inpainting's kept pixels back) into the
        annotated result; `sd_core.batched` finishes each job of a shared loop here too."""
        began = time.perf_counter()
        images = tensor_to_images(self.decode_latents(sampled.latents, sampled.vae))
        if sampled.inpainting is not None:  # the unmasked pixels are the init image's own
            images = sampled.inpainting.paste_back(images)
        warnings = sampled.warnings + interrupted_warning(sampled.interrupted)
        result = GenerationResult(
            images=images,
            params=sampled.params,
            mode=sampled.mode,
            model_name=self.model_name,
            model_hash=self.model_hash,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            timings=GenerationTimings(
                text_encoding=sampled.text_encoding_s,
                sampling=sampled.sampling_s,
                decoding=time.perf_counter() - began,
            ),
            warnings=warnings,
            assets=sampled.assets,
            interrupted_at=None if sampled.interrupted is None else sampled.interrupted[0],
        )
        result.annotate()
        return result

    @tiling_aware
    @torch.inference_mode()
    def generate_latents(
        self,
        params: GenerationParams,
        *,
        init_image: Image.Image | None = None,
        mask: Image.Image | None = None,
        hooks: GenerationHooks | None = None,
        init_latents: Tensor | None = None,
    ) -> tuple[GenerationParams, Tensor]:
        """`generate` without the decode: (resolved params, (B, C, H/8, W/8) scaled latents);
        decode them with `decode_latents(latents, vae_for(params))`. `init_latents` (B, C,
        H/8, W/8), one per image, makes it img2img from those latents (as the hires fix does)."""
        sampled = self.sample_latents(params, init_image, mask, hooks, init_latents=init_latents)
        return sampled.params, sampled.latents

    def resolve(self, params: GenerationParams) -> GenerationParams:
        """`params` checked and completed for this model (its native size, default sampler)."""
        if not isinstance(params, GenerationParams):
            raise ValueError(f"params must be GenerationParams, got {type(params).__name__}")
        resolved = params.resolve(self.config.native_size, self.config.default_sampler)
        if resolved.clip_skip > self.config.clip.layers:
            raise InvalidParam(
                "clip_skip", resolved.clip_skip,
                f"clip_skip must be from 1 to {self.config.clip.layers} for this model (its text "
                f"encoder's layers), got {resolved.clip_skip}",
            )  # fmt: skip
        return resolved

    def sample_latents(
        self,
        params: GenerationParams,
        init_image: Image.Image | None,
        mask: Image.Image | None,
        hooks: GenerationHooks | None,
        init_latents: Tensor | None = None,
        init_pixels: Tensor | None = None,
    ) -> SampledLatents:
        """Check, encode, sample. `init_latents` or `init_pixels` ((B, 3, H, W) in [-1, 1]),
        one per image, make it img2img from them (the hires fix's second pass)."""
        from sd_core.samplers import get_sampler

        hooks = hooks or GenerationHooks()
        if params.hires:
            from sd_core.hires import hires_latents

            if init_image is not None or init_latents is not None or init_pixels is not None:
                raise InvalidParam("hires", True, "the hires fix is for txt2img only")
            return hires_latents(self, params, hooks)
        p = self.resolve(params)
        mode = check_images(init_image, mask, self.config.unet.in_channels == 9)
        if init_latents is not None or init_pixels is not None:
            mode = IMG2IMG
        inpainting = None if mask is None else prepare(cast(Image.Image, init_image), mask, p)
        if inpainting is not None:  # the mask processed, or the crop of "Only masked"
            init_image, mask = inpainting.image, inpainting.mask
        assert p.sampler is not None and p.seed is not None
        spec = get_sampler(p.sampler)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in p.seeds()]

        def check_cancel() -> None:
            if hooks.cancel is not None and hooks.cancel():
                raise GenerationCancelled("generation canceled")

        began = time.perf_counter()
        check_cancel()
        vae = self.vae_for(p)
        loras = self.assets.loras if self.assets is not None else None
        networks = prompt_networks(p.prompt, p.negative_prompt, loras)
        with networks.applied(self.text_encoder, self.unet) as lora_warnings:
            # The text encoder reads the prompts without their tags; the params keep them.
            untagged = replace(p, prompt=networks.prompt, negative_prompt=networks.negative_prompt)
            context, encoded_prompts = self.encode_conditioning(untagged)
            encoded = time.perf_counter()
            given = (init_latents, init_pixels)
            start = starting_latent(self, p, spec, generators, init_image, mask, vae, given)
            latents, interrupted = self._sample(
                p, spec, start, context, hooks, check_cancel, generators
            )
        sampling_s = time.perf_counter() - encoded
        used = self.used_assets(networks, encoded_prompts, vae)
        warnings = (
            *shapes_grammar.model_warnings(self.config.name, networks.prompt),
            *networks.warnings,
            *lora_warnings,
            *encoded_prompts.warnings,
        )
        timing = (encoded - began, sampling_s)
        return SampledLatents(
            p, mode, latents, vae, *timing, warnings, used, inpainting, interrupted
        )

    def used_assets(
        self, networks: PromptNetworks, encoded: EncodedPrompts, vae: AutoencoderKL
    ) -> tuple[UsedAsset, ...]:
        """The LoRAs and embeddings a generation's prompts used, and its VAE when that is a
        separate file rather than the checkpoint's own (the metadata's list of assets)."""
        used = [UsedAsset("lora", u.lora.name, u.lora.short_hash) for u in networks.loras]
        used += [UsedAsset("embedding", e.name, e.short_hash) for e in encoded.embeddings_used]
        if vae is not self.vae and self.separate_vae.file is not None:
            file = self.separate_vae.file
            used.append(UsedAsset("vae", file.name, file.short_hash))
        return tuple(used)

    # -- stage 1: text conditioning --------------------------------------------------------

    def encode_conditioning(self, p: GenerationParams) -> tuple[Tensor, EncodedPrompts]:
        """(2B, 77·n, width) [negative; prompt] hidden states with CFG, else (B, 77·n, width),
        and the prompts as encoded (warnings, embeddings used). Each prompt is encoded once and
        repeated over the batch."""
        prompts = [p.prompt] if p.guidance <= 1.0 else [p.negative_prompt, p.prompt]
        encoded = self.encode_text(prompts, p.clip_skip)
        return torch.cat([e.expand(p.batch, -1, -1) for e in encoded.context]), encoded

    # -- stage 3: the denoiser and the sampling loop ---------------------------------------

    def _denoiser(
        self,
        p: GenerationParams,
        spec: SamplerSpec,
        unet: UNetModel,
        context: Tensor,
        extra_channels: Tensor | None,
        check_cancel: Callable[[], None],
    ) -> Callable[[Tensor, Tensor], Tensor]:
        """D(x; σ): the predicted x0 = x − σ·ε̂, with ε̂ = ε_u + g·(ε_c − ε_u) under CFG.

        The UNet sees x / sqrt(σ² + 1) at the timestep diffusers feeds for this sampler's σ.
        """
        use_cfg = p.guidance > 1.0
        # The UNet timestep for each σ exactly as diffusers feeds it with this sampler.
        to_t = spec.timestep_fn(self.schedule, p.steps, p.scheduler)

        def denoise(x_in: Tensor, sigma: Tensor) -> Tensor:
            check_cancel()
            sigma = sigma.reshape(-1).expand(x_in.shape[0]) if sigma.numel() == 1 else sigma
            # σ is on the CPU: its timestep needs no wait, and an asynchronous copy up does
            # not make the host wait for the device either (a blocking one would, every step).
            t = to_t(sigma).to(torch.float32).to(self.device, non_blocking=True)
            sigma = sigma.to(torch.float32).to(self.device, non_blocking=True)
            scale = (sigma**2 + 1).rsqrt().view(-1, 1, 1, 1)
            model_in = x_in * scale
            if extra_channels is not None:
                model_in = torch.cat([model_in, extra_channels.to(model_in.dtype)], dim=1)
            if use_cfg:
                model_in, t = torch.cat([model_in, model_in]), torch.cat([t, t])
            eps = unet(model_in.to(self.dtype), t, context).float()
            if use_cfg:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + p.guidance * (eps_cond - eps_uncond)
            return x_in - sigma.view(-1, 1, 1, 1) * eps

        return denoise

    def _sample(
        self,
        p: GenerationParams,
        spec: SamplerSpec,
        start: Start,
        context: Tensor,
        hooks: GenerationHooks,
        check_cancel: Callable[[], None],
        generators: Sequence[torch.Generator],
    ) -> tuple[Tensor, tuple[int, int] | None]:
        """Run the sampler from `start`; (B, C, h, w) final latents in the model's scaling, and
        (steps done, steps) when `hooks.interrupt` ended the run early (None: it ran to the end),
        the latents then being the last step's predicted x0.

        After each step: inpainting with a regular checkpoint puts the kept area back on the
        init image's noised trajectory (diffusers' latent blending, in place, so sampling goes
        on from it); then the trace and progress hooks; then the cancel check; then, but after
        the last step, the interrupt check.
        """
        sigmas, blend = start.sigmas, start.blend_mask
        init, start_noise = start.init_latents, start.start_noise
        unet = self.on_device(self.unet)
        denoise = self._denoiser(p, spec, unet, context, start.extra_channels, check_cancel)
        shape = (1, *start.x.shape[1:])

        def on_step(step: int, n: int, x_now: Tensor, denoised: Tensor) -> None:
            if blend is not None and init is not None and start_noise is not None and step < n:
                noised = init + start_noise * sigmas[step]
                x_now.mul_(blend).add_((1 - blend) * noised)
            if hooks.trace is not None:
                hooks.trace(step, n, x_now, denoised)
            if hooks.on_step is not None:
                hooks.on_step(step, n, denoised)
            check_cancel()
            if step < n and hooks.interrupt is not None and hooks.interrupt():
                raise Interrupted(step, denoised)

        interrupted = None
        try:
            if len(sigmas) == 1:
                result = start.x
            else:
                result = start.sample(
                    denoise,
                    start.x,
                    sigmas,
                    noise=lambda: noise(generators, shape, self.device),
                    callback=on_step,
                )
        except Interrupted as stop:
            result, interrupted = stop.denoised, (stop.step, len(sigmas) - 1)
        finally:
            self.off_device(unet)
        if blend is not None and init is not None:
            result = (1 - blend) * init + blend * result
        return result, interrupted
