"""Jobs sharing one denoising loop (`sd_core.batched`): each job's images and step latents are
bit for bit those of the job run alone, float32 on the CPU, for a deterministic and a
stochastic sampler, with different prompts, negative prompts, seeds, guidance (CFG off
included), batch sizes, clip skips and a variation seed; one job's cancel or interrupt leaves
the others as they were."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import sd_core
from sd_core import GenerationCancelled
from sd_core.assets import Assets
from sd_core.batched import BatchJob, batch_key, generate_batch
from sd_core.hooks import GenerationHooks
from sd_core.params import GenerationParams
from sd_core.result import GenerationResult
from tests.sd_core.test_prompt_assets import write_lora

STEPS = 3


@pytest.fixture(scope="module")
def pipe() -> sd_core.StableDiffusionPipeline:
    return sd_core.load_pipeline()  # the built-in model, float32 on the CPU


def jobs_for(sampler: str) -> list[GenerationParams]:
    jobs = [
        GenerationParams(
            "a red circle on a blue background",
            seed=5,
            guidance=7.3,
            variation_seed=8,
            variation_strength=0.4,
        ),  # fmt: skip
        GenerationParams(
            "a small green square in the top left on a white background",
            negative_prompt="blue",
            seed=99,
            guidance=4.0,
            batch=2,
        ),  # fmt: skip
        GenerationParams("a yellow triangle on a gray background", seed=1234, guidance=1.0),
        GenerationParams(
            "a purple circle on a black background", seed=7, guidance=12.5, clip_skip=2
        ),
    ]
    return [replace(job, steps=STEPS, sampler=sampler) for job in jobs]


class Steps:
    """The predicted x0 after every step, as the run's progress hook saw it."""

    def __init__(self) -> None:
        self.latents: list[torch.Tensor] = []

    def __call__(self, step: int, total: int, denoised: torch.Tensor) -> None:
        self.latents.append(denoised.clone())


def pixels(result: GenerationResult) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(image).copy()) for image in result.images]


@pytest.mark.parametrize("sampler", ["euler", "euler_a"])  # deterministic, stochastic
def test_each_job_of_a_shared_loop_equals_its_job_run_alone(
    pipe: sd_core.StableDiffusionPipeline, sampler: str
) -> None:
    params = jobs_for(sampler)
    shared = [Steps() for _ in params]
    outcomes = generate_batch(
        pipe, [BatchJob(p, GenerationHooks(on_step=s)) for p, s in zip(params, shared, strict=True)]
    )
    assert not any("forward" in vars(layer) for layer in pipe.unet.modules())  # layers put back
    for p, outcome, steps in zip(params, outcomes, shared, strict=True):
        assert isinstance(outcome, GenerationResult), outcome
        alone_steps = Steps()
        alone = pipe.generate(p, hooks=GenerationHooks(on_step=alone_steps))
        assert len(steps.latents) == STEPS == len(alone_steps.latents)
        for batched_x0, alone_x0 in zip(steps.latents, alone_steps.latents, strict=True):
            assert torch.equal(batched_x0, alone_x0), p
        assert outcome.params == alone.params
        assert len(outcome.images) == p.batch
        for batched_image, alone_image in zip(pixels(outcome), pixels(alone), strict=True):
            assert torch.equal(batched_image, alone_image), p
        assert outcome.images[0].info["parameters"] == alone.images[0].info["parameters"]


def test_a_canceled_job_leaves_the_loop_and_the_others_are_unchanged(
    pipe: sd_core.StableDiffusionPipeline,
) -> None:
    params = jobs_for("euler_a")[:3]
    seen: list[int] = []

    def cancel_after_first_step() -> bool:
        return bool(seen)

    def interrupt_after_first_step() -> bool:
        return True

    hooks = [
        GenerationHooks(),
        GenerationHooks(
            on_step=lambda step, n, x0: seen.append(step), cancel=cancel_after_first_step
        ),
        GenerationHooks(interrupt=interrupt_after_first_step),
    ]
    outcomes = generate_batch(pipe, [BatchJob(p, h) for p, h in zip(params, hooks, strict=True)])
    assert isinstance(outcomes[1], GenerationCancelled)
    assert seen == [1]  # it saw one step, then left
    interrupted = outcomes[2]
    assert isinstance(interrupted, GenerationResult) and interrupted.interrupted_at == 1
    alone_interrupted = pipe.generate(params[2], hooks=hooks[2])
    assert torch.equal(pixels(interrupted)[0], pixels(alone_interrupted)[0])
    first = outcomes[0]
    assert isinstance(first, GenerationResult)
    assert torch.equal(pixels(first)[0], pixels(pipe.generate(params[0]))[0])


def test_jobs_that_do_not_match_run_alone_and_errors_stay_with_their_job(
    pipe: sd_core.StableDiffusionPipeline,
) -> None:
    a = GenerationParams("a red circle on a blue background", seed=1, steps=2, sampler="euler")
    other_steps = GenerationParams(
        "a red square on a blue background", seed=2, steps=3, sampler="euler"
    )
    broken = GenerationParams(
        "a red circle on a blue background", seed=3, steps=2, sampler="euler", clip_skip=12
    )
    assert batch_key(pipe.resolve(a)) != batch_key(pipe.resolve(other_steps))
    assert batch_key(GenerationParams("x", hires=True)) is None
    outcomes = generate_batch(pipe, [BatchJob(a), BatchJob(other_steps), BatchJob(broken)])
    assert isinstance(outcomes[2], ValueError) and "clip_skip" in str(outcomes[2])
    for p, outcome in zip((a, other_steps), outcomes, strict=False):
        assert isinstance(outcome, GenerationResult)
        assert torch.equal(pixels(outcome)[0], pixels(pipe.generate(p))[0])


def test_jobs_asking_for_the_same_loras_share_a_loop_and_others_run_alone(
    tmp_path: Path,
) -> None:
    pipe = sd_core.load_pipeline()
    (tmp_path / "loras").mkdir()
    write_lora(tmp_path / "loras" / "ink.safetensors", pipe, seed=1)
    pipe.use_assets(Assets.under(tmp_path))
    before = [t.clone() for m in (pipe.text_encoder, pipe.unet) for t in m.state_dict().values()]
    prompts = [
        "<lora:ink:0.8> a red circle on a blue background",
        "a green square on a white background <lora:ink:0.8>",
        "<lora:ink:0.5> a red circle on a blue background",  # another multiplier
        "a red circle on a blue background",  # no LoRA
    ]
    params = [
        GenerationParams(text, seed=i, steps=2, sampler="euler") for i, text in enumerate(prompts)
    ]
    rows: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(len(args[0])))
    try:
        outcomes = generate_batch(pipe, [BatchJob(p) for p in params])
    finally:
        hook.remove()
    assert rows == [4, 4, 2, 2, 2, 2]  # the first two together (CFG: 2 rows each), then alone
    after = [t for m in (pipe.text_encoder, pipe.unet) for t in m.state_dict().values()]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    for p, outcome in zip(params, outcomes, strict=True):
        assert isinstance(outcome, GenerationResult), outcome
        alone = pipe.generate(p)
        assert torch.equal(pixels(outcome)[0], pixels(alone)[0]), p.prompt
        assert [a.name for a in outcome.assets] == [a.name for a in alone.assets]
