"""`SdCoreGenerator`: the `Generator` protocol implemented by the sd_core engine.

sd_core (and so torch) is imported inside the methods, never at module import, so importing the
app stays cheap. Pipelines are cached per (model path, device, dtype, low-memory mode) in a
`PipelineCache` bounded by the settings' memory budget.

A job asking for a filmstrip (`JobSpec.filmstrip_frames`) has its reverse process recorded
through the pipeline's `trace` hook while it samples (a few small latents of image 0); after the
images, those frames are decoded with the same pipeline's VAE and composed into one strip
(`sd_core.explorer`), which costs 2 · frames VAE decodes and no second generation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from sd_core.assets import AssetFolders
from sd_core.result import GenerationResult
from stable_diffusion_api.services.generator import (
    BatchEntry,
    CheckpointSpec,
    DeviceSpec,
    Filmstrip,
    FilmstripCallback,
    FilmstripFrame,
    ForwardResult,
    ForwardSpec,
    ForwardStep,
    JobCanceled,
    JobSpec,
    ModelSpec,
    SamplerSpec,
    StepCallback,
)
from stable_diffusion_api.services.pipeline_cache import PipelineCache

log = logging.getLogger(__name__)

_BYTES_PER_PARAMETER = {"float32": 4, "float16": 2, "bfloat16": 2}
# A filmstrip cell is at most this many pixels a side: a detail page shows 8 of them in a row.
FILMSTRIP_CELL = 256
# Decoding a filmstrip costs 2 · frames VAE decodes. On the CPU that is cheap for dali-tiny
# (about 17 ms a frame at 64²) but minutes for SD v1.5 at 512² (one decode is seconds), so above
# this much decoder work a frame (decoder parameters × latent cells; dali-tiny at 64²: 5.0e7,
# SD v1.5 at 512²: 2.0e11) the CPU draws the frames with the cheap linear latent → RGB preview
# instead. GPUs always decode with the VAE.
FILMSTRIP_CPU_DECODE_BUDGET = 4e9
# An autotune times each candidate over this many images after its first (which compiles).
AUTOTUNE_REPEATS = 3
AUTOTUNE_PROMPT = "a red apple on a wooden table"
# The forward process is shown at least this large (a tiny model's native size is 64).
FORWARD_MIN_SIDE = 256


def _reporter(on_step: StepCallback) -> Callable[[int, int, Any], None]:
    """The engine's progress hook for the worker's `on_step`: the preview's latent (image 0's)
    is copied out only when the worker asks for it (every few steps)."""

    def report(step: int, total: int, latents: Any) -> None:
        on_step(step, total, lambda: latents[0].detach().float().cpu().numpy().copy())

    return report


def _native_size(metadata: dict[str, str], variant: str) -> int | None:
    """Dali's own files carry their config (native size included) in the metadata; other SD v1
    files are the original 512-pixel architecture."""
    from sd_core.checkpoint import METADATA_CONFIG_KEY

    try:
        size = json.loads(metadata.get(METADATA_CONFIG_KEY, "{}")).get("native_size")
    except (json.JSONDecodeError, AttributeError):
        size = None
    if isinstance(size, int):
        return size
    return 512 if variant.startswith("sd-v1") else None


class SdCoreGenerator:
    def __init__(
        self,
        cache_budget_bytes: int,
        torch_threads: int | None = None,
        asset_folders: AssetFolders | None = None,
        fast_path_file: Path | None = None,
    ) -> None:
        """`asset_folders`: where prompts' LoRAs and embeddings and requests' VAEs are found
        (None: none are installed); `fast_path_file`: where `autotune` keeps each device's
        chosen fast path, applied to every pipeline loaded on it (None: never tuned, eager)."""
        self._asset_folders = asset_folders
        self._fast_path_file = fast_path_file
        self._assets: Any = None
        self.cache: PipelineCache[Any] = PipelineCache(self._load, cache_budget_bytes)
        self._torch_threads = torch_threads

    def list_devices(self) -> list[DeviceSpec]:
        from sd_core import devices

        return [
            DeviceSpec(
                id=d.id,
                kind=d.kind,
                name=d.name,
                total_memory=d.total_memory,
                free_memory=d.free_memory,
                cores=d.cores,
                compute_capability=d.compute_capability,
                dtypes=tuple(d.dtypes),
                default_dtype=getattr(d, "default_dtype", d.dtypes[0]),
            )
            for d in devices.list_devices()
        ]

    def samplers(self) -> list[SamplerSpec]:
        from sd_core import samplers

        specs = []
        for name in samplers.sampler_names():
            spec = samplers.get_sampler(name)
            specs.append(
                SamplerSpec(
                    spec.name,
                    spec.display_name,
                    tuple(spec.aliases),
                    spec.takes_schedule_type,
                    spec.max_steps,
                    spec.eta,
                    spec.eta_settable,
                )
            )
        return specs

    def builtin_checkpoint(self) -> Path:
        import sd_core

        return Path(sd_core.BUILTIN_MODEL_PATH)

    def inspect_checkpoint(self, path: Path) -> CheckpointSpec:
        from sd_core.checkpoint import checkpoint_info

        info = checkpoint_info(path)
        return CheckpointSpec(
            native_size=_native_size(info.metadata, info.variant),
            variant=info.variant,
            dtype=str(info.dtype),
            parameters=dict(info.parameters),
            sha256=info.sha256,
            short_hash=info.short_hash,
        )

    def _load(self, key: Hashable) -> Any:
        import torch

        import sd_core

        assert isinstance(key, tuple), "keys are built by `generate`"
        path, device, dtype, low_memory = key
        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give back what evicted pipelines held
        pipe = sd_core.load_pipeline(path, device=device, dtype=dtype, low_memory=low_memory)
        self._apply_fast_path(pipe)
        if self._asset_folders is not None:
            if self._assets is None:
                from sd_core.assets import Assets

                self._assets = Assets.in_folders(self._asset_folders)
            pipe.use_assets(self._assets)
        return pipe

    def _apply_fast_path(self, pipe: Any) -> None:
        """Apply the fast path autotune chose for the pipeline's device and dtype, if any (a
        low-memory pipeline moves its models between uses, which would undo it: none)."""
        if self._fast_path_file is None or pipe.low_memory:
            return
        from sd_core.autotune import chosen_fast_path
        from sd_core.devices import device_info
        from sd_core.fast_path import apply_fast_path

        dtype = str(pipe.dtype).removeprefix("torch.")
        name = device_info(pipe.device).name
        fast = chosen_fast_path(self._fast_path_file, str(pipe.device), name, dtype)
        if fast is None:
            return
        if fast.mode in ("compile", "cuda_graphs"):
            self._use_compile_cache()
        try:
            apply_fast_path(pipe, fast)
        except ValueError as exc:  # the machine changed since (no compiler now, …): eager
            log.warning("fast path %s not applied on %s: %s", fast.label, pipe.device, exc)

    def _use_compile_cache(self) -> None:
        """Keep torch.compile's kernels beside the autotune file (unless the environment says
        where): they survive restarts and /tmp clean-ups, so the first image after a restart
        loads them instead of compiling again, and the autotune's trials fill the cache for the
        mode it chooses."""
        if self._fast_path_file is not None:
            cache = str(self._fast_path_file.parent / "compile-cache")
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", cache)

    def autotune(self, model: ModelSpec, steps: int) -> dict[str, object]:
        """Tune `model.device` (see `Generator.autotune`): a float32 pipeline of the model is
        loaded for it, every dtype the device takes is tried, and the loaded pipelines are
        dropped so the next job loads with the choice applied."""
        import torch

        import sd_core
        from sd_core.autotune import autotune, save_autotune
        from sd_core.devices import device_info
        from sd_core.params import GenerationParams

        if self._torch_threads is not None:
            torch.set_num_threads(self._torch_threads)
        self._use_compile_cache()
        self.cache.clear()  # room for the trials; reloaded afterwards with the choice applied
        pipe = sd_core.load_pipeline(model.checkpoint, device=model.device, dtype="float32")
        dtypes = device_info(pipe.device).dtypes
        params = GenerationParams(AUTOTUNE_PROMPT, seed=0, steps=steps, sampler="euler")
        result = autotune(pipe, dtypes, params, repeats=AUTOTUNE_REPEATS)
        if self._fast_path_file is not None:
            save_autotune(self._fast_path_file, result)
        self.cache.clear()
        return result.as_json()

    def _size_estimate(self, model: ModelSpec) -> int:
        if model.parameter_count is None:
            return model.checkpoint.stat().st_size if model.checkpoint.exists() else 0
        dtype = model.dtype or ("float32" if model.device == "cpu" else "float16")
        return model.parameter_count * _BYTES_PER_PARAMETER.get(dtype, 4)

    def _pipeline(self, model: ModelSpec) -> Any:
        """The loaded pipeline of `model`, from the cache or loaded now."""
        key = (str(model.checkpoint), model.device, model.dtype, model.low_memory)
        return self.cache.get(key, self._size_estimate(model))

    def _recorder(self, pipe: Any, job: JobSpec) -> Any:
        """The `trace` callback recording `job`'s reverse process (an
        `sd_core.explorer.FilmstripRecorder`), or None when the job wants no filmstrip."""
        if job.filmstrip_frames <= 0:
            return None
        from sd_core.explorer import recorder_for_run

        return recorder_for_run(pipe, job.params.sampler, job.params.steps, job.filmstrip_frames)

    @staticmethod
    def _vae_decode_affordable(pipe: Any, frames: list[Any]) -> bool:
        """Whether decoding every frame with the VAE is cheap enough (see
        FILMSTRIP_CPU_DECODE_BUDGET)."""
        if pipe.device.type != "cpu":
            return True
        vae = pipe.vae
        decoder = sum(p.numel() for p in vae.decoder.parameters())
        cells = frames[0].noisy.shape[-2] * frames[0].noisy.shape[-1]
        return bool(decoder * cells <= FILMSTRIP_CPU_DECODE_BUDGET)

    def _filmstrip(self, pipe: Any, frames: list[Any]) -> Filmstrip | None:
        """Recorded frames decoded (with `pipe`'s VAE where affordable) and composed; None if
        decoding failed (the images are made by then: a generation never fails for its
        filmstrip)."""
        from sd_core.explorer import (
            approximate_filmstrip_images,
            compose_filmstrip,
            filmstrip_images,
        )

        decoder = "vae" if self._vae_decode_affordable(pipe, frames) else "approximate"
        try:
            if decoder == "vae":
                decoded = filmstrip_images(pipe, frames)
            else:
                decoded = approximate_filmstrip_images(frames)
        except (RuntimeError, ValueError) as exc:  # torch's errors, out of memory included
            log.warning("filmstrip dropped: decoding its frames failed: %s", exc)
            return None
        return Filmstrip(
            image=compose_filmstrip(decoded, FILMSTRIP_CELL),
            frames=tuple(FilmstripFrame(f.step, f.total, f.sigma) for f in frames),
            decoder=decoder,
        )

    def generate(
        self,
        job: JobSpec,
        on_step: StepCallback,
        should_cancel: Callable[[], bool],
        on_filmstrip: FilmstripCallback | None = None,
        should_interrupt: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        import sd_core

        pipe = self._pipeline(job.model)
        recorder = self._recorder(pipe, job)

        hooks = sd_core.GenerationHooks(
            on_step=_reporter(on_step), cancel=should_cancel, trace=recorder,
            interrupt=should_interrupt,
        )  # fmt: skip
        try:
            result = pipe.generate(
                job.params, init_image=job.init_image, mask=job.mask, hooks=hooks
            )
        except sd_core.GenerationCancelled as exc:
            raise JobCanceled(str(exc)) from exc
        if recorder is not None and recorder.frames and on_filmstrip is not None:
            filmstrip = self._filmstrip(pipe, recorder.frames)
            if filmstrip is not None:
                on_filmstrip(filmstrip)
        return result

    def generate_batch(self, entries: Sequence[BatchEntry]) -> list[GenerationResult | Exception]:
        import sd_core
        from sd_core.batched import BatchJob, generate_batch

        models = {entry.job.model for entry in entries}
        if len(models) != 1 or any(e.job.init_image is not None for e in entries):
            raise ValueError("a batch is txt2img jobs of one model on one device")
        pipe = self._pipeline(entries[0].job.model)
        recorders = [self._recorder(pipe, entry.job) for entry in entries]
        jobs = [
            BatchJob(
                entry.job.params,
                sd_core.GenerationHooks(
                    on_step=_reporter(entry.on_step),
                    cancel=entry.should_cancel,
                    trace=recorder,
                    interrupt=entry.should_interrupt,
                ),
            )  # fmt: skip
            for entry, recorder in zip(entries, recorders, strict=True)
        ]
        results: list[GenerationResult | Exception] = []
        outcomes = generate_batch(pipe, jobs)
        for entry, recorder, outcome in zip(entries, recorders, outcomes, strict=True):
            if isinstance(outcome, sd_core.GenerationCancelled):
                canceled = JobCanceled(str(outcome))
                canceled.__cause__ = outcome
                results.append(canceled)
            elif isinstance(outcome, GenerationResult):
                if recorder is not None and recorder.frames and entry.on_filmstrip is not None:
                    filmstrip = self._filmstrip(pipe, recorder.frames)
                    if filmstrip is not None:
                        entry.on_filmstrip(filmstrip)
                results.append(outcome)
            elif isinstance(outcome, Exception):
                results.append(outcome)
            else:  # KeyboardInterrupt, SystemExit: not a job's outcome
                raise outcome
        return results

    def forward_process(self, spec: ForwardSpec) -> ForwardResult:
        import torch

        from sd_core.explorer import decode_to_images, encode_mean, fit_size, forward_process

        pipe = self._pipeline(
            ModelSpec(spec.checkpoint, spec.model_name, spec.device, spec.dtype,
                      parameter_count=spec.parameter_count)
        )  # fmt: skip
        image = spec.image.convert("RGB")
        limit = max(pipe.config.native_size, FORWARD_MIN_SIDE)
        width, height = fit_size(image.width, image.height, limit)
        x0 = encode_mean(pipe, image, width, height)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(spec.seed))
        samples = [forward_process(x0, t, pipe.schedule, noise=noise) for t in spec.timesteps]
        clean, *noisy = decode_to_images(pipe, torch.cat([x0, *(s.x_t for s in samples)]))
        return ForwardResult(
            clean=clean,
            steps=tuple(
                ForwardStep(s.t, s.alpha_bar, s.snr, s.snr_db, s.sigma, picture)
                for s, picture in zip(samples, noisy, strict=True)
            ),
        )
