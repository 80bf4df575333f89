"""No host sync inside the sampling loop: every sampler, driven by the pipeline's CFG denoiser,
runs with the latents, the UNet and the text context on the `meta` device, where any read of a
device tensor's value by the host (`.item()`, `float(t)`, `bool(t)`, a copy to the CPU) raises.
On a GPU each such read would make the host wait for the device once per step."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sd_core.checkpoint import build_models
from sd_core.config import TINY_TEST
from sd_core.hooks import GenerationHooks
from sd_core.params import GenerationParams
from sd_core.pipeline import StableDiffusionPipeline
from sd_core.samplers import get_sampler, sampler_names

META = torch.device("meta")
# One level with attention is enough to exercise the denoiser; the meta device dispatches every
# operation in Python, so the full tiny UNet would cost seconds per sampler.
CONFIG = replace(
    TINY_TEST,
    unet=replace(TINY_TEST.unet, channel_mult=(1,), num_res_blocks=1, attention_resolutions=(1,)),
)


@pytest.fixture(scope="module")
def meta_pipe() -> StableDiffusionPipeline:
    models = build_models(CONFIG, device=META)
    pipe = StableDiffusionPipeline.__new__(StableDiffusionPipeline)
    # Only what the sampling stage reads: a real __init__ would also place the models.
    pipe.config, pipe.unet, pipe.device, pipe.dtype = CONFIG, models["unet"], META, torch.float32
    pipe.low_memory = False
    from sd_core.schedule import NoiseSchedule

    pipe.schedule = NoiseSchedule(CONFIG.schedule)
    return pipe


def test_the_meta_device_refuses_host_reads() -> None:
    with pytest.raises((RuntimeError, NotImplementedError)):
        float(torch.ones((), device=META))


@pytest.mark.parametrize("sampler", sampler_names())
def test_no_sampler_reads_a_device_tensor_in_the_loop(meta_pipe, sampler) -> None:  # type: ignore[no-untyped-def]
    from sd_core.start import Start

    spec = get_sampler(sampler)
    p = GenerationParams("x", seed=1, steps=2, sampler=sampler, guidance=7.5, width=64,
                         height=64).resolve(64, "euler")  # fmt: skip
    sigmas = spec.sigmas(meta_pipe.schedule, p.steps).to(torch.float32)
    assert sigmas.device.type == "cpu"
    x = torch.empty(1, 4, 8, 8, device=META)
    context = torch.empty(2, 77, CONFIG.unet.context_dim, device=META)
    generators = [torch.Generator("cpu").manual_seed(1)]
    steps: list[int] = []
    hooks = GenerationHooks(on_step=lambda step, n, denoised: steps.append(step))
    start = Start(x, sigmas, spec.fn)
    with torch.inference_mode():
        result, interrupted = meta_pipe._sample(
            p, spec, start, context, hooks, lambda: None, generators
        )
    assert result.device == META and result.shape == x.shape
    assert interrupted is None and steps[-1] == p.steps
