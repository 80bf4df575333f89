"""Several txt2img jobs in one denoising loop, each image as if its job ran alone.

    outcomes = generate_batch(pipe, [BatchJob(params_a, hooks_a), BatchJob(params_b)])
    # one GenerationResult or the exception that ended it, per job, in order

Jobs share a loop when their `batch_key`s match: the same size, sampler, steps, scheduler,
eta, VAE and tiling, txt2img without the hires fix (the pipeline, so the model, is the caller's
one). After their prompts are read they must also ask for the same LoRAs with the same
multipliers (the LoRAs are patched into the shared UNet) and encode to the same number of
75-token chunks (their contexts are stacked). Everything else is the job's own: prompt,
negative prompt, clip skip, guidance, seed, batch size, variation seed and strength, hooks. A
job that matches no other runs alone through `StableDiffusionPipeline.generate`.

What stays per job inside the shared loop:

- conditioning: each job's prompts are encoded alone (exactly the calls of a lone run);
- guidance: the UNet sees [uncond; cond] rows of a job with CFG, only cond rows of one
  without, and ε̂ = ε_u + g·(ε_c − ε_u) takes a (B, 1, 1, 1) scale holding each row's own g
  (g = 1 for a job without CFG, where ε_u = ε_c, which gives ε_c exactly);
- noise: every image keeps its `torch.Generator("cpu").manual_seed(seed + i)`; the starting
  noise and a stochastic sampler's step noise are drawn job by job from those generators, in
  the order a lone run draws them;
- hooks: progress, trace and interrupt see the job's own rows; a job whose `cancel()` turns
  True (or whose hook raises) leaves the loop: its rows skip the UNet from then on (their x0
  is taken as x itself, which keeps the sampler's arithmetic finite) and the others go on;
- the result: the job's own params, timings (sampling is the shared loop's time), warnings,
  decoded images and metadata (`StableDiffusionPipeline.finish`).

Bit for bit on the CPU. Run alone, a job's UNet call has 2·B rows (B without CFG); stacked
with others it has more. Measured on the built-in model in float32 on the CPU (1 and 2
threads, 8 and 16 rows against 1 to 4, latents 8×8 and 32×32), each layer given the same rows
gives the same output in the 3×3 convolutions, GroupNorm, LayerNorm, SiLU and
`scaled_dot_product_attention`, but not in three places: `nn.Linear` when M (rows × tokens)
is small (the timestep MLP, the ResBlocks' timestep projections, the middle block's
transformer with one token a row: up to 1.2e-6 apart, the GEMM picks another kernel for
another M); at one thread and 16 rows the 1×1 convolutions (GEMMs too: up to 4.8e-7); and
GEGLU's GELU with one token a row (a strided half of the projection, which takes another
loop than a lone row's contiguous one). So on the CPU `rows_by_job` runs every `nn.Linear`,
`nn.Conv2d` and GEGLU of the UNet job by job, on exactly the rows a lone run gives it, and
everything else (norms, attention, activations, the skip concatenations) once for the whole
stack: each image is `torch.equal` to its job run alone (tests/sd_core/test_batched.py). On
another device the UNet runs the stack in one go (the fast path the batching is for) and an
image is as close to its lone run as a batch's images are (docs/architecture.md, "Seeds and
noise").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from sd_core import GenerationCancelled, shapes_grammar
from sd_core.extra_networks import PromptNetworks, prompt_networks
from sd_core.hooks import GenerationHooks, Interrupted
from sd_core.params import GenerationParams
from sd_core.result import TXT2IMG, GenerationResult
from sd_core.start import noise, starting_latent
from sd_core.tiling import circular_padding
from sd_core.unet import GEGLU

if TYPE_CHECKING:
    from sd_core.conditioning import EncodedPrompts
    from sd_core.pipeline import StableDiffusionPipeline
    from sd_core.samplers import SamplerSpec
    from sd_core.vae import AutoencoderKL

# The GenerationParams fields that must be equal for jobs to share one denoising loop.
BATCH_FIELDS = ("width", "height", "sampler", "steps", "scheduler", "eta", "vae", "tiling")

Outcome = GenerationResult | BaseException

# The UNet layers that run job by job on the CPU (the module docstring says why).
SLICED_LAYERS = (nn.Linear, nn.Conv2d, GEGLU)


@dataclass(frozen=True)
class BatchJob:
    """One job of a shared loop: its params (txt2img) and its hooks."""

    params: GenerationParams
    hooks: GenerationHooks = field(default_factory=GenerationHooks)


def batch_key(params: GenerationParams) -> tuple[object, ...] | None:
    """What jobs sharing a loop must have in common (resolved params); None: it runs alone
    (the hires fix, whose second pass is an img2img of its own)."""
    if params.hires:
        return None
    return tuple(getattr(params, name) for name in BATCH_FIELDS)


@contextmanager
def rows_by_job(unet: nn.Module, rows: Sequence[int]) -> Iterator[None]:
    """Inside the block, every layer of `unet` of a `SLICED_LAYERS` type runs its input's
    dim 0 in slices of `rows` (one per job), each slice as a lone run's call (the layers inside
    such a layer, like GEGLU's projection, then see one job's slice already). On the CPU only
    (see the module docstring); elsewhere, or for one job, nothing changes."""
    if next(unet.parameters()).device.type != "cpu" or len(rows) < 2:
        yield
        return
    layers: list[nn.Module] = []
    sliced_names: tuple[str, ...] = ()  # prefixes of the layers inside a sliced one
    for name, module in unet.named_modules():
        if isinstance(module, SLICED_LAYERS) and not name.startswith(sliced_names):
            layers.append(module)
            sliced_names = (*sliced_names, f"{name}.")

    def sliced(layer: nn.Module) -> Callable[[Tensor], Tensor]:
        own = type(layer).forward

        def forward(x: Tensor) -> Tensor:
            return torch.cat([own(layer, part) for part in torch.split(x, list(rows))])

        return forward

    try:
        for layer in layers:
            layer.forward = sliced(layer)
        yield
    finally:
        for layer in layers:
            del layer.forward


@dataclass
class _Job:
    """A job in the loop: its resolved params, hooks, generators, where its rows lie in the
    stacked latent (`first`, `first + params.batch`), its context, and how it ended."""

    params: GenerationParams
    hooks: GenerationHooks
    networks: PromptNetworks
    index: int  # its place in the caller's list
    first: int = 0
    generators: list[torch.Generator] = field(default_factory=list)
    context: Tensor | None = None  # (2B or B, 77·n, width), as `encode_conditioning` gives it
    encoded: EncodedPrompts | None = None
    text_encoding_s: float = 0.0
    outcome: Outcome | None = None  # set when it left the loop early
    interrupted: tuple[int, int] | None = None
    latents: Tensor | None = None

    @property
    def rows(self) -> slice:
        return slice(self.first, self.first + self.params.batch)

    @property
    def cfg(self) -> bool:
        return self.params.guidance > 1.0

    @property
    def active(self) -> bool:
        return self.outcome is None and self.latents is None


class _AllLeft(Exception):  # noqa: N818 (a signal: every job of the loop has left it)
    pass


def generate_batch(pipe: StableDiffusionPipeline, jobs: Sequence[BatchJob]) -> list[Outcome]:
    """Run `jobs` (txt2img, no init image) on `pipe`, those with matching keys in one loop;
    per job, in order, its GenerationResult or the exception that ended it
    (GenerationCancelled, InvalidParam, …). One job's failure never ends another."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    groups: dict[tuple[object, ...], list[_Job]] = {}
    loras = pipe.assets.loras if pipe.assets is not None else None
    for index, job in enumerate(jobs):
        try:
            p = pipe.resolve(job.params)
            key = batch_key(p)
            networks = None if key is None else prompt_networks(p.prompt, p.negative_prompt, loras)
        except Exception as error:  # noqa: BLE001 (the job's outcome; the others go on)
            outcomes[index] = error
            continue
        if key is None or networks is None:
            outcomes[index] = _alone(pipe, job)
            continue
        lora_set = tuple((u.lora.name, u.text_encoder, u.unet) for u in networks.loras)
        groups.setdefault((*key, lora_set), []).append(_Job(p, job.hooks, networks, index))
    for group in groups.values():
        if len(group) == 1:
            only = group[0]
            outcomes[only.index] = _alone(pipe, jobs[only.index])
            continue
        for done in _run_group(pipe, group):
            outcomes[done.index] = done.outcome
    assert all(outcome is not None for outcome in outcomes), "every job has ended"
    return [outcome for outcome in outcomes if outcome is not None]


def _alone(pipe: StableDiffusionPipeline, job: BatchJob) -> Outcome:
    try:
        return pipe.generate(job.params, hooks=job.hooks)
    except Exception as error:  # noqa: BLE001 (the job's outcome)
        return error


@torch.inference_mode()
def _run_group(pipe: StableDiffusionPipeline, group: list[_Job]) -> list[_Job]:
    """Encode each job, then run those whose contexts stack (same length) in one loop each;
    every job of `group` comes back with its `outcome` set."""
    try:
        _encode_and_sample(pipe, group)
    except Exception as error:  # noqa: BLE001 (shared by the jobs still without an outcome)
        for job in group:
            if job.outcome is None:
                job.outcome = error
    return group


def _encode_and_sample(pipe: StableDiffusionPipeline, group: list[_Job]) -> None:
    """`_run_group`'s work, with the group's tiling and LoRAs applied around it."""
    p0 = group[0].params
    vae = pipe.vae_for(p0)
    with ExitStack() as stack:
        if p0.tiling:
            stack.enter_context(circular_padding(pipe.unet, vae))
        lora_warnings = stack.enter_context(group[0].networks.applied(pipe.text_encoder, pipe.unet))
        by_length: dict[int, list[_Job]] = {}
        for job in group:
            began = time.perf_counter()
            try:
                _check_cancel(job)
                net = job.networks
                untagged = replace(
                    job.params, prompt=net.prompt, negative_prompt=net.negative_prompt
                )
                job.context, job.encoded = pipe.encode_conditioning(untagged)
            except Exception as error:  # noqa: BLE001 (the job's outcome)
                job.outcome = error
                continue
            job.text_encoding_s = time.perf_counter() - began
            by_length.setdefault(job.context.shape[1], []).append(job)
        for stacked in by_length.values():
            sampling_s = _sample(pipe, stacked, vae)
            for job in stacked:
                if job.latents is not None:
                    job.outcome = _result(pipe, job, vae, lora_warnings, sampling_s)


def _check_cancel(job: _Job) -> None:
    if job.hooks.cancel is not None and job.hooks.cancel():
        raise GenerationCancelled("generation canceled")


def _sample(pipe: StableDiffusionPipeline, jobs: list[_Job], vae: AutoencoderKL) -> float:
    """One denoising loop for `jobs`; sets each job's `latents` (B, C, h, w), or its
    `outcome` when it left early. Returns the loop's seconds."""
    from sd_core.samplers import get_sampler

    began = time.perf_counter()
    p0 = jobs[0].params
    assert p0.sampler is not None
    spec = get_sampler(p0.sampler)
    starts, first = [], 0
    for job in jobs:
        job.first, first = first, first + job.params.batch
        job.generators = [torch.Generator("cpu").manual_seed(s) for s in job.params.seeds()]
        starts.append(starting_latent(pipe, job.params, spec, job.generators, None, None, vae))
    x = torch.cat([start.x for start in starts])
    sigmas, sample = starts[0].sigmas, starts[0].sample
    shape = (1, *x.shape[1:])
    unet = pipe.on_device(pipe.unet)
    denoise = _denoiser(pipe, spec, jobs)

    def step_noise() -> Tensor:  # each job's rows from its own generators
        return torch.cat([noise(job.generators, shape, pipe.device) for job in jobs])

    def on_step(step: int, n: int, x_now: Tensor, denoised: Tensor) -> None:
        for job in [j for j in jobs if j.active]:
            rows = job.rows
            try:
                if job.hooks.trace is not None:
                    job.hooks.trace(step, n, x_now[rows], denoised[rows])
                if job.hooks.on_step is not None:
                    job.hooks.on_step(step, n, denoised[rows])
                _check_cancel(job)
                if step < n and job.hooks.interrupt is not None and job.hooks.interrupt():
                    raise Interrupted(step, denoised[rows])
            except Interrupted as stop:
                steps = len(sigmas) - 1  # as a lone run reports it
                job.latents, job.interrupted = stop.denoised.clone(), (stop.step, steps)
            except Exception as error:  # noqa: BLE001 (the job's outcome; the others go on)
                job.outcome = error
        if not any(job.active for job in jobs):
            raise _AllLeft

    try:
        if len(sigmas) == 1:
            result = x
        else:
            result = sample(denoise, x, sigmas, noise=step_noise, callback=on_step)
        for job in jobs:
            if job.active:
                job.latents = result[job.rows]
    except _AllLeft:
        pass
    finally:
        pipe.off_device(unet)
    return time.perf_counter() - began


def _denoiser(
    pipe: StableDiffusionPipeline, spec: SamplerSpec, jobs: list[_Job]
) -> Callable[[Tensor, Tensor], Tensor]:
    """D(x; σ) for the stacked latent (N, C, h, w): each active job's rows through the UNet
    as its lone run feeds them ([x; x] with [uncond; cond] under CFG, else x with cond), the
    jobs' rows stacked into one call; ε̂ = ε_u + g·(ε_c − ε_u) with each row's own g."""
    p0 = jobs[0].params
    to_t = spec.timestep_fn(pipe.schedule, p0.steps, p0.scheduler)

    def denoise(x_in: Tensor, sigma: Tensor) -> Tensor:
        for job in [j for j in jobs if j.active]:
            try:
                _check_cancel(job)
            except Exception as error:  # noqa: BLE001 (the job's outcome)
                job.outcome = error
        live = [job for job in jobs if job.active]
        if not live:
            raise _AllLeft
        sigma = sigma.reshape(-1).expand(x_in.shape[0]) if sigma.numel() == 1 else sigma
        t = to_t(sigma).to(pipe.device, torch.float32)
        scale = (sigma.float() ** 2 + 1).rsqrt().view(-1, 1, 1, 1)
        model_in = x_in * scale
        inputs, times, contexts, rows = [], [], [], []
        for job in live:
            copies = 2 if job.cfg else 1
            inputs += [model_in[job.rows]] * copies
            times += [t[job.rows]] * copies
            assert job.context is not None
            contexts.append(job.context)
            rows.append(copies * job.params.batch)
        with rows_by_job(pipe.unet, rows):
            eps_all = pipe.unet(
                torch.cat(inputs).to(pipe.dtype), torch.cat(times), torch.cat(contexts)
            ).float()
        eps_uncond = torch.zeros_like(x_in)
        eps_cond = torch.zeros_like(x_in)
        guidance = torch.ones(x_in.shape[0], 1, 1, 1, device=x_in.device)
        for job, part in zip(live, eps_all.split(rows), strict=True):
            if job.cfg:
                eps_uncond[job.rows], eps_cond[job.rows] = part.chunk(2)
                guidance[job.rows] = job.params.guidance
            else:
                eps_uncond[job.rows] = eps_cond[job.rows] = part
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        return x_in - sigma.float().view(-1, 1, 1, 1) * eps

    return denoise


def _result(
    pipe: StableDiffusionPipeline,
    job: _Job,
    vae: AutoencoderKL,
    lora_warnings: tuple[str, ...],
    sampling_s: float,
) -> Outcome:
    """The job's GenerationResult from its latents, as a lone run's `sample_latents` and `finish`
    make it (or the error decoding met)."""
    from sd_core.pipeline import SampledLatents

    assert job.latents is not None and job.encoded is not None
    net = job.networks
    used = pipe.used_assets(net, job.encoded, vae)
    grammar = shapes_grammar.model_warnings(pipe.config.name, net.prompt)
    warnings = (*grammar, *net.warnings, *lora_warnings, *job.encoded.warnings)
    sampled = SampledLatents(
        job.params, TXT2IMG, job.latents, vae, job.text_encoding_s, sampling_s,
        warnings, used, None, job.interrupted,
    )  # fmt: skip
    try:
        return pipe.finish(sampled)
    except Exception as error:  # noqa: BLE001 (the job's outcome)
        return error
