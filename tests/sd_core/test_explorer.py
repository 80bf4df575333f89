"""The diffusion explorer: the forward process q(x_t | x0) and the reverse-process filmstrip.

The forward process is checked against the schedule computed here independently (numpy,
float32 like diffusers), with many noise samples: at t the residual x_t - sqrt(ᾱ_t)·x0 has
variance 1 - ᾱ_t and mean 0, within sampling error. The filmstrip is checked on synthetic trace
calls and on a real (random-weight, tiny) pipeline run.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST, ScheduleConfig
from sd_core.explorer import (
    FilmstripFrame,
    FilmstripRecorder,
    alpha_bar,
    compose_filmstrip,
    decode_to_images,
    encode_mean,
    evenly_spaced_steps,
    filmstrip_images,
    fit_size,
    forward_process,
    recorder_for_run,
    signal_to_noise,
)
from sd_core.image_tensors import image_to_tensor
from sd_core.params import GenerationParams
from sd_core.pipeline import GenerationHooks
from sd_core.samplers import get_sampler
from sd_core.schedule import NoiseSchedule
from tests.reference import random_checkpoint

SCHEDULE = NoiseSchedule(ScheduleConfig())


def reference_alphas_cumprod() -> np.ndarray:
    """SD v1's "scaled_linear" ᾱ_t, written out from its definition in float64 (the engine
    builds it in float32 like diffusers: the two agree to ~1e-6 relative)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


# --------------------------------------------------------------------------- forward process


@pytest.mark.parametrize("t", [0, 1, 250, 500, 999])
def test_alpha_bar_and_snr_follow_the_schedule(t: int) -> None:
    expected = reference_alphas_cumprod()[t]
    a = alpha_bar(SCHEDULE, t)
    assert a == pytest.approx(expected, rel=1e-5)
    assert signal_to_noise(SCHEDULE, t) == pytest.approx(a / (1 - a), rel=1e-12)
    # 1 - ᾱ_0 ≈ 8.5e-4 amplifies the float32 round-off of ᾱ, hence the looser match here.
    assert signal_to_noise(SCHEDULE, t) == pytest.approx(expected / (1 - expected), rel=1e-4)
    # The same noise level in sigma space: SNR = 1 / σ².
    assert signal_to_noise(SCHEDULE, t) == pytest.approx(
        1 / float(SCHEDULE.sigmas[t]) ** 2, rel=1e-6
    )


def test_snr_falls_from_clean_to_pure_noise() -> None:
    snrs = [signal_to_noise(SCHEDULE, t) for t in range(1000)]
    assert all(a > b for a, b in zip(snrs, snrs[1:], strict=False))
    assert snrs[0] > 1000  # t = 0: almost all signal
    assert snrs[-1] < 0.005  # t = 999: almost all noise


@pytest.mark.parametrize("t", [10, 200, 500, 800, 999])
def test_noised_latent_has_the_variance_the_schedule_says(t: int) -> None:
    # 256 samples of one structured latent: 262,144 values; the standard error of a variance
    # estimate is then sqrt(2 / n) ≈ 0.28 %, so 1.5 % is > 5 standard errors.
    x0 = torch.linspace(-2.0, 2.0, 4 * 16 * 16).reshape(1, 4, 16, 16).repeat(256, 1, 1, 1)
    sample = forward_process(x0, t, SCHEDULE, generator=torch.Generator().manual_seed(t))
    a = reference_alphas_cumprod()[t]
    residual = sample.x_t - math.sqrt(a) * x0
    assert residual.var().item() == pytest.approx(1 - a, rel=0.015)
    # The mean over the samples is sqrt(ᾱ_t)·x0 at every position (standard error sqrt((1-ᾱ)/256)).
    mean = sample.x_t.mean(dim=0)
    tolerance = 5 * math.sqrt((1 - a) / 256)
    assert (mean - math.sqrt(a) * x0[0]).abs().max().item() < tolerance
    assert sample.alpha_bar == pytest.approx(a, rel=1e-5)
    assert sample.sigma == pytest.approx(float(SCHEDULE.sigmas[t]), rel=1e-5)


def test_unit_variance_latent_keeps_unit_variance() -> None:
    # The forward process is variance preserving: Var[x_t] = ᾱ·1 + (1 - ᾱ) = 1 for any t.
    x0 = torch.randn((64, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    for t in (0, 300, 999):
        x_t = forward_process(x0, t, SCHEDULE, generator=torch.Generator().manual_seed(1)).x_t
        assert x_t.var().item() == pytest.approx(1.0, rel=0.02)


def test_t_zero_returns_the_input() -> None:
    x0 = torch.randn((8, 4, 32, 32), generator=torch.Generator().manual_seed(3))
    clean = forward_process(x0, 0, SCHEDULE, generator=torch.Generator().manual_seed(4)).x_t
    noisy = forward_process(x0, 999, SCHEDULE, generator=torch.Generator().manual_seed(4)).x_t
    # sqrt(1 - ᾱ_0) ≈ 0.029: the input, barely touched; at t = 999 it is all but gone.
    assert (clean - x0).pow(2).mean().sqrt().item() < 0.035
    assert (noisy - x0).pow(2).mean().sqrt().item() > 1.0
    assert torch.corrcoef(torch.stack([clean.flatten(), x0.flatten()]))[0, 1] > 0.999


def test_given_noise_is_used_exactly() -> None:
    x0 = torch.full((1, 4, 8, 8), 0.5)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    sample = forward_process(x0, 400, SCHEDULE, noise=noise)
    a = alpha_bar(SCHEDULE, 400)
    torch.testing.assert_close(sample.x_t, math.sqrt(a) * x0 + math.sqrt(1 - a) * noise)
    same_seed = forward_process(x0, 400, SCHEDULE, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(same_seed.x_t, sample.x_t)


@pytest.mark.parametrize("t", [-1, 1000, 2.5, True, "10"])
def test_bad_timestep_is_refused_with_the_range(t: object) -> None:
    with pytest.raises(ValueError, match=r"t must be .*0 to 999"):
        forward_process(torch.zeros(1, 4, 8, 8), t, SCHEDULE)  # type: ignore[arg-type]


def test_noise_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="noise must have x0's shape"):
        forward_process(torch.zeros(1, 4, 8, 8), 5, SCHEDULE, noise=torch.zeros(1, 4, 4, 4))


def test_fit_size_keeps_aspect_and_multiples() -> None:
    assert fit_size(1024, 768, 512) == (512, 384)
    assert fit_size(100, 60, 512) == (96, 56)
    assert fit_size(3, 900, 256) == (8, 256)
    with pytest.raises(ValueError, match="image size must be positive"):
        fit_size(0, 10, 64)


# --------------------------------------------------------------------------- reverse process


def test_evenly_spaced_steps() -> None:
    assert evenly_spaced_steps(10, 4) == [1, 4, 7, 10]
    assert evenly_spaced_steps(20, 5) == [1, 6, 11, 15, 20]
    assert evenly_spaced_steps(6, 3) == [1, 4, 6]  # 3.5 rounds up, not to even
    assert evenly_spaced_steps(3, 8) == [1, 2, 3]
    assert evenly_spaced_steps(7, 1) == [7]
    for total in range(1, 60):
        for count in range(1, 12):
            steps = evenly_spaced_steps(total, count)
            assert len(steps) == min(total, count)
            assert steps[-1] == total and steps[0] == (1 if count > 1 else total)
            gaps = np.diff(steps)
            assert (gaps >= 1).all()  # strictly increasing, so distinct
            if len(gaps):
                assert gaps.max() - gaps.min() <= 1  # even, up to rounding
    for bad in ((0, 3), (5, 0), (5.0, 2)):
        with pytest.raises(ValueError, match="must be a positive"):
            evenly_spaced_steps(*bad)  # type: ignore[arg-type]


def test_recorder_keeps_evenly_spaced_steps_scaled_to_x_t() -> None:
    sigmas = get_sampler("euler").sigmas(SCHEDULE, 12)
    recorder = FilmstripRecorder(sigmas, frames=4)
    xs = {}
    for step in range(1, 13):
        x = torch.full((2, 4, 8, 8), float(step))  # a batch of 2: only image 0 is kept
        x[1] = -1.0
        xs[step] = x
        recorder(step, 12, x, x * 0.5)
    assert [f.step for f in recorder.frames] == [1, 5, 8, 12]
    for frame in recorder.frames:
        sigma = float(sigmas[frame.step])
        assert frame.sigma == pytest.approx(sigma)
        assert frame.noisy.shape == (1, 4, 8, 8)
        torch.testing.assert_close(frame.noisy, xs[frame.step][:1] / math.sqrt(sigma**2 + 1))
        torch.testing.assert_close(frame.denoised, xs[frame.step][:1] * 0.5)
    assert recorder.frames[-1].sigma == 0.0 and recorder.frames[-1].snr == math.inf
    # Frames are copies: the sampler may edit its latent in place afterwards.
    xs[12].fill_(100.0)
    assert recorder.frames[-1].noisy.max().item() == 12.0


def test_recorder_uses_the_tail_of_the_schedule_for_img2img() -> None:
    spec = get_sampler("euler")
    sigmas = spec.sigmas(SCHEDULE, 20)
    plan = spec.img2img(SCHEDULE, 20, 0.5)  # 10 steps from the middle of the schedule
    recorder = FilmstripRecorder(sigmas, frames=3)
    for step in range(1, 11):
        recorder(step, 10, torch.ones(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))
    assert [f.step for f in recorder.frames] == [1, 6, 10]
    assert [f.sigma for f in recorder.frames] == pytest.approx(
        [float(plan.sigmas[s]) for s in (1, 6, 10)]
    )


def test_recorder_without_schedule_keeps_raw_latents() -> None:
    recorder = FilmstripRecorder(frames=2)
    for step in range(1, 5):
        recorder(step, 4, torch.full((1, 4, 8, 8), float(step)), torch.zeros(1, 4, 8, 8))
    assert [(f.step, f.sigma, f.snr) for f in recorder.frames] == [(1, None, None), (4, None, None)]
    assert recorder.frames[0].noisy.max().item() == 1.0
    with pytest.raises(ValueError, match="frames must be a positive integer"):
        FilmstripRecorder(frames=0)


def test_recorder_for_run_follows_the_runs_schedule() -> None:
    pipe = SimpleNamespace(config=SimpleNamespace(default_sampler="dpmpp_2m"), schedule=SCHEDULE)
    chosen = recorder_for_run(pipe, "euler", 10, frames=4)  # type: ignore[arg-type]
    torch.testing.assert_close(chosen.sigmas, get_sampler("euler").sigmas(SCHEDULE, 10).double())
    assert chosen.frame_count == 4
    default = recorder_for_run(pipe, None, 10)  # type: ignore[arg-type]
    torch.testing.assert_close(
        default.sigmas, get_sampler("dpmpp_2m").sigmas(SCHEDULE, 10).double()
    )
    # A sampler the run will refuse: the recorder still works, its frames without σ.
    assert recorder_for_run(pipe, "no-such-sampler", 10).sigmas is None  # type: ignore[arg-type]


def _frame(step: int) -> FilmstripFrame:
    latent = torch.zeros(1, 4, 2, 2)
    return FilmstripFrame(step=step, total=3, sigma=1.0, noisy=latent, denoised=latent)


def test_compose_filmstrip_puts_noisy_above_denoised_one_column_a_frame() -> None:
    colours = [((255, 0, 0), (0, 255, 0)), ((0, 0, 255), (255, 255, 0)), ((9, 9, 9), (99, 9, 9))]
    decoded = [
        (_frame(step), Image.new("RGB", (40, 20), top), Image.new("RGB", (40, 20), bottom))
        for step, (top, bottom) in enumerate(colours, start=1)
    ]
    strip = compose_filmstrip(decoded)
    assert strip.mode == "RGB" and strip.size == (3 * 40, 2 * 20)
    for column, (top, bottom) in enumerate(colours):
        assert strip.getpixel((column * 40 + 20, 10)) == top
        assert strip.getpixel((column * 40 + 20, 30)) == bottom
    # Large cells are scaled down to fit the limit, keeping their aspect.
    assert compose_filmstrip(decoded, cell_limit=16).size == (3 * 16, 2 * 8)
    assert compose_filmstrip(decoded, cell_limit=64).size == (120, 40)  # never scaled up
    with pytest.raises(ValueError, match="at least one decoded frame"):
        compose_filmstrip([])


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):  # type: ignore[no-untyped-def]
    # One thread: on a shared, busy machine torch's spinning worker threads make these
    # millisecond-sized models take tens of seconds; the previous setting comes back after.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("explorer") / "tiny.safetensors"
    save_checkpoint(path, random_checkpoint(TINY_TEST, seed=7), TINY_TEST)
    yield sd_core.load_pipeline(path)
    torch.set_num_threads(threads)


def test_filmstrip_of_a_real_run(tiny_pipe) -> None:  # type: ignore[no-untyped-def]
    steps = 6
    recorder = FilmstripRecorder(get_sampler("euler").sigmas(tiny_pipe.schedule, steps), frames=3)
    params = GenerationParams("a red circle", seed=11, steps=steps, sampler="euler", guidance=5.0)
    _, latents = tiny_pipe.generate_latents(params, hooks=GenerationHooks(trace=recorder))
    assert [f.step for f in recorder.frames] == [1, 4, 6]
    last = recorder.frames[-1]
    # Euler's last step lands on σ = 0, where x is its own prediction and the final latent.
    assert last.sigma == 0.0
    torch.testing.assert_close(last.noisy, last.denoised)
    torch.testing.assert_close(last.noisy, latents[:1].float())
    decoded = filmstrip_images(tiny_pipe, recorder.frames)
    assert [f.step for f, _, _ in decoded] == [1, 4, 6]
    for _, noisy, denoised in decoded:
        assert noisy.size == denoised.size == (64, 64)
    strip = compose_filmstrip(decoded)
    assert strip.size == (3 * 64, 2 * 64)
    assert np.array_equal(np.asarray(strip.crop((64, 64, 128, 128))), np.asarray(decoded[1][2]))
    # The last frame's x0 picture is the generated image itself.
    image = tiny_pipe.generate(params).images[0]
    assert np.array_equal(np.asarray(decoded[-1][2]), np.asarray(image))


def test_encode_then_forward_then_decode(tiny_pipe) -> None:  # type: ignore[no-untyped-def]
    image = Image.new("RGB", (80, 48), (200, 30, 30))
    latent = encode_mean(tiny_pipe, image, 80, 48)
    assert latent.shape == (1, 4, 6, 10) and latent.dtype == torch.float32
    # The posterior mean × the latent scale: what encode_image gives with no sampling noise.
    mean, _ = tiny_pipe.vae.encode(image_to_tensor(image, 80, 48))
    torch.testing.assert_close(latent, mean.float() * TINY_TEST.vae.scale_factor)
    sample = forward_process(
        latent, 999, tiny_pipe.schedule, generator=torch.Generator().manual_seed(0)
    )
    images = decode_to_images(tiny_pipe, torch.cat([latent, sample.x_t]))
    assert [i.size for i in images] == [(80, 48), (80, 48)]
