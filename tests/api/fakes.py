"""A fake `Generator` for queue mechanics: no model, controllable timing, real PNG files."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

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

GIB = 1024**3
FAKE_MAGIC = b"FAKE-CHECKPOINT"


def write_fake_checkpoint(path: Path, variant: str = "sd-v1", payload: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(FAKE_MAGIC + b" " + variant.encode() + b" " + payload)
    return path


class FakeGenerator:
    """Draws a flat colour from the seed; every step calls back and polls `should_cancel`,
    then (but after the last) `should_interrupt`: an interrupted run's images are grey.

    `block_at` makes a run wait at that step until `release` is set, so tests can act while a
    job is provably running; `fail_with` makes the next runs raise it; `textured` draws random
    pixels from the seed instead, for tests that resample the images.
    """

    def __init__(self, builtin: Path) -> None:
        self.builtin = builtin
        self.step_delay = 0.0
        self.block_at: int | None = None
        self.reached = threading.Event()
        self.release = threading.Event()
        self.fail_with: Exception | None = None
        self.warnings: tuple[str, ...] = ()  # what the next runs' results warn about
        self.calls: list[JobSpec] = []
        self.batches: list[list[str]] = []  # the prompts of each generate_batch call
        self.steps_run: dict[str, int] = {}
        self.size = 64
        self.textured = False
        self.forwards: list[tuple[ForwardSpec, str]] = []  # each task and the thread that ran it
        self.autotunes: list[tuple[ModelSpec, int]] = []  # each autotune's model and steps
        self.autotune_file: Path | None = None  # where autotune keeps its result, as the engine

    def list_devices(self) -> list[DeviceSpec]:
        return [
            DeviceSpec("cpu", "cpu", "Fake CPU", 16 * GIB, 8 * GIB, 2, None,
                       ("float32", "bfloat16"), "float32"),
            DeviceSpec("cuda:0", "cuda", "Fake GPU", 24 * GIB, 20 * GIB, 80, "8.6",
                       ("float32", "float16", "bfloat16"), "float16"),
        ]  # fmt: skip

    def samplers(self) -> list[SamplerSpec]:
        return [
            SamplerSpec("euler_a", "Euler a", ("k_euler_a",), eta=1.0, eta_settable=True),
            SamplerSpec("euler", "Euler"),
            SamplerSpec("ddim", "DDIM", (), takes_schedule_type=False, eta=0.0, eta_settable=True),
            SamplerSpec("dpmpp_2m", "DPM++ 2M"),
            SamplerSpec("lcm", "LCM", (), takes_schedule_type=False, max_steps=50),
        ]

    def builtin_checkpoint(self) -> Path:
        return self.builtin

    def inspect_checkpoint(self, path: Path) -> CheckpointSpec:
        data = path.read_bytes()
        if not data.startswith(FAKE_MAGIC):
            raise ValueError(f"checkpoint {str(path)!r} is not a Stable Diffusion v1 checkpoint")
        digest = hashlib.sha256(data).hexdigest()
        variant = data.split(b" ")[1].decode()
        return CheckpointSpec(variant, "float32", {"unet": 1000, "vae": 100, "text_encoder": 10},
                              digest, digest[:10])  # fmt: skip

    def generate(
        self,
        job: JobSpec,
        on_step: StepCallback,
        should_cancel: Callable[[], bool],
        on_filmstrip: FilmstripCallback | None = None,
        should_interrupt: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        self.calls.append(job)
        params = job.params.resolve(self.size, "euler_a")  # the fake model's default sampler
        width, height = params.width or self.size, params.height or self.size
        interrupted_at = None
        for step in range(1, params.steps + 1):
            if should_cancel():
                raise JobCanceled(f"canceled at step {step}")
            if self.block_at == step:
                self.reached.set()
                self.release.wait(10)
            if self.step_delay:
                time.sleep(self.step_delay)
            self.steps_run[params.prompt] = step
            on_step(step, params.steps, lambda: np.zeros((4, height // 8, width // 8), np.float32))
            if step < params.steps and should_interrupt is not None and should_interrupt():
                interrupted_at = step
                break
        if self.fail_with is not None:
            raise self.fail_with
        images = [
            self.picture(seed, width, height)
            if interrupted_at is None
            else Image.new("RGB", (width, height), "gray")
            for seed in params.seeds()
        ]
        warnings = self.warnings
        if interrupted_at is not None:  # as the engine says it
            warnings += (f"interrupted after step {interrupted_at} of {params.steps}",)
        result = GenerationResult(images, params, "txt2img" if job.init_image is None else
                                  "img2img", job.model.model_name, "", job.model.device,
                                  job.model.dtype or "float32", warnings=warnings,
                                  interrupted_at=interrupted_at)  # fmt: skip
        result.annotate()
        if job.filmstrip_frames > 0 and on_filmstrip is not None:
            on_filmstrip(self.filmstrip(job, width // 2, height // 2))
        return result

    def generate_batch(self, entries: Sequence[BatchEntry]) -> list[GenerationResult | Exception]:
        """The entries one after another (the fake has no loop to share); `batches` keeps
        each call's prompts."""
        self.batches.append([entry.job.params.prompt for entry in entries])
        outcomes: list[GenerationResult | Exception] = []
        for entry in entries:
            try:
                outcomes.append(self.generate(entry.job, entry.on_step, entry.should_cancel,
                                              entry.on_filmstrip, entry.should_interrupt))  # fmt: skip
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def picture(self, seed: int, width: int, height: int) -> Image.Image:
        if self.textured:
            pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
            return Image.fromarray(pixels, "RGB")
        return Image.new("RGB", (width, height), (seed % 256, (seed // 256) % 256, 128))

    @staticmethod
    def filmstrip(job: JobSpec, cell_width: int, cell_height: int) -> Filmstrip:
        """The last `filmstrip_frames` steps (the real engine spreads them out), a grey cell
        each, and σ falling linearly to 0."""
        total = job.params.steps
        steps = list(range(1, total + 1))[-job.filmstrip_frames :]
        frames = tuple(FilmstripFrame(s, total, 10.0 * (1 - s / total)) for s in steps)
        image = Image.new("RGB", (cell_width * len(frames), 2 * cell_height), "gray")
        return Filmstrip(image, frames)

    def autotune(self, model: ModelSpec, steps: int) -> dict[str, object]:
        """Figures in the engine's shape: eager 0.5 s, compiled 0.3 s (chosen), a broken mode
        outside tolerance 0.1 s; kept in `autotune_file` as the engine keeps them."""
        self.autotunes.append((model, steps))
        if self.fail_with is not None:
            raise self.fail_with

        def tried(mode: str, fused: bool, status: str, seconds: float, error: float) -> dict:  # type: ignore[type-arg]
            fast = {"mode": mode, "dtype": "float32", "fused_qkv": fused}
            label = mode + (" + fused QKV" if fused else "") + ", float32"
            return {"fast_path": fast, "label": label, "status": status, "seconds": seconds,
                    "first_s": seconds * 20, "error": error, "note": ""}  # fmt: skip

        result: dict[str, object] = {
            "device": model.device,
            "device_name": "Fake CPU",
            "results": [
                tried("eager", False, "ok", 0.5, 0.0),
                tried("compile", True, "ok", 0.3, 0.1),
                tried("channels_last", True, "outside tolerance", 0.1, 9.5),
            ],
            "chosen": {"float32": {"mode": "compile", "dtype": "float32", "fused_qkv": True}},
            "skipped": {"cuda_graphs": "CUDA graphs need a CUDA device"},
        }
        if self.autotune_file is not None:
            self.autotune_file.write_text(json.dumps({model.device: result}))
        return result

    def forward_process(self, spec: ForwardSpec) -> ForwardResult:
        """The image back as "decoded", and per timestep a grey picture as bright as the signal
        left, with the numbers of a made-up schedule (ᾱ falling linearly from 1 to 0)."""
        self.forwards.append((spec, threading.current_thread().name))
        if self.fail_with is not None:
            raise self.fail_with
        for t in spec.timesteps:
            if not 0 <= t <= 999:
                raise ValueError(f"t must be from 0 to 999, got {t}")
        clean = spec.image.convert("RGB")
        steps = []
        for t in spec.timesteps:
            alpha_bar = 1.0 - (t + 1) / 1001
            snr = alpha_bar / (1.0 - alpha_bar)
            grey = int(255 * alpha_bar)
            picture = Image.new("RGB", clean.size, (grey, grey, grey))
            steps.append(
                ForwardStep(t, alpha_bar, snr, 10 * math.log10(snr), math.sqrt(1 / snr), picture)
            )
        return ForwardResult(clean, tuple(steps))
