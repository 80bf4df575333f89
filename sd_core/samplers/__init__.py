"""The sampler registry: every sampler by name, with the σ schedule its diffusers scheduler uses.

    spec = get_sampler("Euler a")                 # canonical name, A1111 label or alias
    sigmas = spec.sigmas(schedule, steps)         # (N+1,) float32
    x = torch.randn(...) * spec.initial_noise_scale(sigmas)
    to_t = spec.timestep_fn(schedule, steps)      # σ → the UNet timestep diffusers feeds
    latent = spec.fn(denoise, x, sigmas, noise=noise, callback=callback)

img2img: `plan = spec.img2img(schedule, steps, strength)`, start from
`init_latent + noise * plan.sigmas[0]` and run `plan.fn(denoise, x, plan.sigmas, …)`. For every
sampler but LMS that is `sigmas[t_start:]` with `t_start = steps - int(steps * strength)` and
`spec.fn`, exactly diffusers' img2img (`timesteps[t_start * order:]` + `add_noise`); LMS and
DPM++ 3M need the skipped σ's too (see `sd_core.samplers.lms`, `sd_core.samplers.dpmpp_3m`).

The sampler functions themselves live one per file; see `sd_core.samplers.base` for the shared
signature and conventions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

from sd_core.params import MAX_STEPS
from sd_core.samplers.base import Denoiser, NoiseSource, SamplerFn, StepCallback
from sd_core.samplers.ddim import sample_ddim
from sd_core.samplers.ddpm import sample_ddpm
from sd_core.samplers.dpm2 import sample_dpm2
from sd_core.samplers.dpm2_ancestral import sample_dpm2_ancestral
from sd_core.samplers.dpmpp_2m import sample_dpmpp_2m
from sd_core.samplers.dpmpp_2m_sde import sample_dpmpp_2m_sde
from sd_core.samplers.dpmpp_2s_ancestral import sample_dpmpp_2s_ancestral
from sd_core.samplers.dpmpp_3m import sample_dpmpp_3m, sample_dpmpp_3m_sde
from sd_core.samplers.dpmpp_sde import sample_dpmpp_sde
from sd_core.samplers.euler import sample_euler
from sd_core.samplers.euler_ancestral import sample_euler_ancestral
from sd_core.samplers.heun import sample_heun
from sd_core.samplers.lcm import ORIGINAL_STEPS, lcm_schedule, sample_lcm
from sd_core.samplers.lms import sample_lms
from sd_core.samplers.plms import sample_plms
from sd_core.samplers.restart import sample_restart
from sd_core.samplers.unipc import sample_unipc
from sd_core.schedule import NoiseSchedule, SigmaSchedule, TimestepRounding

__all__ = [
    "SAMPLERS",
    "Denoiser",
    "Img2ImgPlan",
    "NoiseSource",
    "SamplerFn",
    "SamplerSpec",
    "StepCallback",
    "TimestepFn",
    "get_sampler",
    "sampler_names",
]

# The σ spacing of each diffusers scheduler family, built with SD v1.5's scheduler config.
Spacing = Literal["leading", "leading_to_alpha0", "linspace", "linspace_rounded", "karras", "lcm"]
# How txt2img's starting latent is scaled: diffusers' init_noise_sigma in sigma space.
InitialNoise = Literal["sigma_max", "vp"]
TimestepFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Img2ImgPlan:
    """What img2img runs: start from init_latent + noise * sigmas[0], then fn(…, sigmas, …).

    sigmas: (M+1,) float32, the tail of the sampler's schedule (M = int(steps * strength)).
    fn: the sampler function to call, with the same signature as `SamplerSpec.fn`.
    """

    sigmas: Tensor
    fn: SamplerFn


@dataclass(frozen=True)
class SamplerSpec:
    """One registered sampler.

    name: canonical name ("euler_a"); display_name: AUTOMATIC1111's label ("Euler a");
    aliases: other accepted spellings; fn: the sampler function; stochastic: whether it calls
    its NoiseSource; spacing / initial_noise: how its diffusers scheduler places its σ's and
    scales the first latent; description: one line for a UI.
    eta: the η its steps run with (AUTOMATIC1111's "Eta": DDIM 0, the ancestral and SDE
    samplers 1; None: it has none); eta_settable: whether it takes another η (0 … 1), passed to
    its function as `eta`.
    """

    name: str
    display_name: str
    aliases: tuple[str, ...]
    fn: SamplerFn
    stochastic: bool
    spacing: Spacing
    initial_noise: InitialNoise
    description: str = ""
    # LMS needs the σ's that img2img skips; see `img2img`.
    img2img_needs_prior: bool = field(default=False, repr=False)
    eta: float | None = field(default=None, repr=False)
    eta_settable: bool = field(default=False, repr=False)
    # How its diffusers scheduler turns Karras / exponential σ's into UNet timesteps.
    karras_timesteps: TimestepRounding = field(default="exact", repr=False)
    exponential_timesteps: TimestepRounding = field(default="exact", repr=False)

    @property
    def max_steps(self) -> int:
        """The most steps this sampler takes: LCM's distillation schedule has 50 timesteps,
        every other sampler takes the engine's limit (`sd_core.params.MAX_STEPS`)."""
        return ORIGINAL_STEPS if self.spacing == "lcm" else MAX_STEPS

    @property
    def takes_schedule_type(self) -> bool:
        """Whether a schedule type (`sd_core.schedule_types`) may replace this sampler's σ's:
        the k-diffusion-style samplers; DDPM/DDIM/PLMS/LCM keep their own timesteps."""
        return self.spacing not in ("leading", "leading_to_alpha0", "lcm")

    def schedule(
        self, schedule: NoiseSchedule, steps: int, scheduler: str | None = None
    ) -> SigmaSchedule:
        """σ's (N+1,) and UNet timesteps (N,), float64, as this sampler's diffusers scheduler
        builds them for `steps` inference steps.

        scheduler: a canonical schedule type ("karras", "exponential", "sgm_uniform") in place
        of the sampler's own spacing, as its diffusers scheduler builds it with
        `use_karras_sigmas` / `use_exponential_sigmas` / `timestep_spacing="trailing"`; None
        keeps the sampler's own. ValueError for a sampler that takes none (`takes_schedule_type`).
        """
        if scheduler is not None:
            return self._typed_schedule(schedule, steps, scheduler)
        if self.spacing == "leading":
            return schedule.leading(steps)
        if self.spacing == "leading_to_alpha0":
            return schedule.leading(steps, final_sigma=schedule.sigma_min)
        if self.spacing == "linspace":
            return schedule.linspace(steps)
        if self.spacing == "linspace_rounded":
            return schedule.linspace_rounded(steps)
        if self.spacing == "karras":
            return schedule.karras(steps, timesteps=self.karras_timesteps)
        if self.spacing == "lcm":
            return lcm_schedule(schedule, steps)
        raise AssertionError(f"unhandled spacing {self.spacing!r}")

    def _typed_schedule(self, schedule: NoiseSchedule, steps: int, scheduler: str) -> SigmaSchedule:
        if not self.takes_schedule_type:
            raise ValueError(
                f"sampler {self.display_name!r} has its own timesteps; it takes no schedule type "
                f"(got {scheduler!r})"
            )
        # diffusers' DPM-Solver/UniPC feed integer timesteps (Karras σ's rounded, exponential
        # ones truncated by an int64 cast), KDPM2 rounds Karras ones; the rest are fractional.
        if scheduler == "karras":
            return schedule.karras(steps, timesteps=self.karras_timesteps)
        if scheduler == "exponential":
            return schedule.exponential(steps, timesteps=self.exponential_timesteps)
        if scheduler == "sgm_uniform":
            return schedule.trailing(steps)
        raise ValueError(
            f"unknown schedule type {scheduler!r}; choose one of: karras, exponential, sgm_uniform"
        )

    def sigmas(self, schedule: NoiseSchedule, steps: int, scheduler: str | None = None) -> Tensor:
        """(N+1,) float32 σ schedule, decreasing, as this sampler's diffusers scheduler builds it
        (with schedule type `scheduler`, if given; see `schedule`)."""
        return self.schedule(schedule, steps, scheduler).sigmas.float()

    def initial_noise_scale(self, sigmas: Tensor) -> float:
        """txt2img: x_start = standard_normal * this.

        diffusers' init_noise_sigma in sigma space: σ_max for the Euler family (their x_T is
        σ_max·ε), sqrt(σ_max² + 1) for DDPM/DDIM/PNDM/DPM-Solver/UniPC, whose x_T = ε is a
        variance-preserving latent (x = x_T / sqrt(ᾱ_T) in sigma space).
        """
        sigma_max = float(sigmas[0])
        if self.initial_noise == "sigma_max":
            return sigma_max
        return (sigma_max**2 + 1.0) ** 0.5

    def timestep_fn(
        self, schedule: NoiseSchedule, steps: int, scheduler: str | None = None
    ) -> TimestepFn:
        """σ (any shape) → the UNet timestep diffusers feeds with it (float64, CPU), for this sampler.

        A σ of the schedule maps to its own timestep (fractional for linspace spacing, rounded
        for Karras σ's, as diffusers makes them); any other σ (the midpoints DPM2 and DPM++ SDE
        evaluate) goes through `NoiseSchedule.sigma_to_t`, log-σ interpolation, as diffusers'
        `_sigma_to_t` does. Matching is exact on float32 values, the dtype samplers use.

        A Denoiser that wraps the UNet should use this rather than `NoiseSchedule.sigma_to_t`:
        the two differ by up to half a training step on Karras σ's (diffusers rounds their
        timesteps) and by up to ~0.003 of a step at fractional linspace timesteps. One case
        stays approximate: diffusers' DPM2 a evaluates its midpoint at exactly σ_{i+1} but with
        the log-interpolated timestep, while σ_{i+1} itself gets its linspace timestep; a map
        keyed by σ gives both the latter (~0.003 of a step apart at 50 steps, 0 at 10).
        """
        plan = self.schedule(schedule, steps, scheduler)
        table_sigmas = plan.sigmas[:-1].float()
        table_t = plan.timesteps

        def to_t(sigma: Tensor) -> Tensor:
            flat = sigma.detach().to("cpu", torch.float32).reshape(-1)
            t = schedule.sigma_to_t(flat)
            hits = flat[:, None] == table_sigmas[None, :]
            found = hits.any(dim=1)
            if bool(found.any()):
                t[found] = table_t[hits[found].float().argmax(dim=1)]
            return t.reshape(sigma.shape)

        return to_t

    def img2img(
        self, schedule: NoiseSchedule, steps: int, strength: float, scheduler: str | None = None
    ) -> Img2ImgPlan:
        """The σ's and function img2img runs, equal to diffusers' img2img with this scheduler.

        t_start = steps - int(steps * strength) steps of the full schedule are skipped (diffusers'
        `get_timesteps`). LMS alone needs more than the tail: diffusers' LMS keeps building its
        polynomials over the skipped σ's, so its function comes bound to them.
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        sigmas = self.sigmas(schedule, steps, scheduler)
        t_start = max(steps - min(int(steps * strength), steps), 0)
        fn = self.fn
        if self.img2img_needs_prior and t_start > 0:
            fn = functools.partial(self.fn, prior_sigmas=sigmas[:t_start])
        return Img2ImgPlan(sigmas=sigmas[t_start:], fn=fn)


def _spec(
    name: str,
    display_name: str,
    fn: SamplerFn,
    *,
    aliases: tuple[str, ...] = (),
    stochastic: bool = False,
    spacing: Spacing = "linspace",
    initial_noise: InitialNoise = "sigma_max",
    description: str = "",
    img2img_needs_prior: bool = False,
    karras_timesteps: TimestepRounding = "exact",
    exponential_timesteps: TimestepRounding = "exact",
    eta: float | None = None,
    eta_settable: bool = False,
) -> SamplerSpec:
    return SamplerSpec(
        name=name,
        display_name=display_name,
        aliases=aliases,
        fn=fn,
        stochastic=stochastic,
        spacing=spacing,
        initial_noise=initial_noise,
        description=description,
        img2img_needs_prior=img2img_needs_prior,
        karras_timesteps=karras_timesteps,
        exponential_timesteps=exponential_timesteps,
        eta=eta,
        eta_settable=eta_settable,
    )


def _karras(plain: SamplerSpec) -> SamplerSpec:
    """`plain` on Karras et al.'s noise levels: A1111's "<label> Karras", its own sampler."""
    short = plain.name.removeprefix("dpmpp_")
    return replace(
        plain,
        name=f"{plain.name}_karras",
        display_name=f"{plain.display_name} Karras",
        aliases=(f"dpm++_{short}_karras", f"k_{plain.name}_karras"),
        spacing="karras",
        description=f"{plain.display_name} on Karras et al.'s noise levels",
    )


# The samplers A1111 also lists with Karras σ's under a name of their own, right after them.
_WITH_KARRAS_NAME = ("dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde")
_PLAIN = [
    _spec(
        "ddpm",
        "DDPM",
        sample_ddpm,
        aliases=("ddpm_ancestral",),
        stochastic=True,
        spacing="leading",
        initial_noise="vp",
        description="Ho et al. 2020 ancestral sampling; needs many steps",
    ),
    _spec(
        "ddim",
        "DDIM",
        sample_ddim,
        spacing="leading_to_alpha0",
        initial_noise="vp",
        description="Song et al. 2021; deterministic unless given an eta",
        eta=0.0,
        eta_settable=True,
    ),
    _spec(
        "plms",
        "PLMS",
        sample_plms,
        aliases=("pndm",),
        spacing="leading_to_alpha0",
        initial_noise="vp",
        description="pseudo linear multistep (PNDM without Runge-Kutta warm-up)",
    ),
    _spec(
        "euler",
        "Euler",
        sample_euler,
        aliases=("k_euler", "euler_discrete"),
        description="first-order ODE solver; deterministic",
    ),
    _spec(
        "euler_a",
        "Euler a",
        sample_euler_ancestral,
        aliases=("euler_ancestral", "k_euler_a", "k_euler_ancestral"),
        stochastic=True,
        description="Euler with ancestral noise; varies with step count",
        eta=1.0,
        eta_settable=True,
    ),
    _spec(
        "heun",
        "Heun",
        sample_heun,
        aliases=("k_heun",),
        description="second-order ODE solver; two model calls a step",
    ),
    _spec(
        "lms",
        "LMS",
        sample_lms,
        aliases=("k_lms", "lms_discrete"),
        description="fourth-order linear multistep",
        img2img_needs_prior=True,
    ),
    _spec(
        "dpm2",
        "DPM2",
        sample_dpm2,
        aliases=("k_dpm_2", "kdpm2"),
        karras_timesteps="round",
        description="second-order midpoint solver; two model calls a step",
    ),
    _spec(
        "dpm2_a",
        "DPM2 a",
        sample_dpm2_ancestral,
        aliases=("dpm2_ancestral", "k_dpm_2_a", "kdpm2_a"),
        karras_timesteps="round",
        stochastic=True,
        description="DPM2 with ancestral noise",
        eta=1.0,
        eta_settable=True,
    ),
    _spec(
        "dpmpp_2m",
        "DPM++ 2M",
        sample_dpmpp_2m,
        aliases=("dpm++_2m", "dpmsolver++", "k_dpmpp_2m"),
        karras_timesteps="round",
        exponential_timesteps="floor",
        spacing="linspace_rounded",
        initial_noise="vp",
        description="DPM-Solver++ second-order multistep; good at 20-30 steps",
    ),
    _spec(
        "dpmpp_2m_sde",
        "DPM++ 2M SDE",
        sample_dpmpp_2m_sde,
        aliases=("dpm++_2m_sde", "sde-dpmsolver++", "k_dpmpp_2m_sde"),
        stochastic=True,
        karras_timesteps="round",
        exponential_timesteps="floor",
        spacing="linspace_rounded",
        initial_noise="vp",
        description="stochastic DPM-Solver++ second-order multistep",
        eta=1.0,
    ),
    _spec(
        "dpmpp_3m",
        "DPM++ 3M",
        sample_dpmpp_3m,
        aliases=("dpm++_3m", "k_dpmpp_3m"),
        karras_timesteps="round",
        exponential_timesteps="floor",
        spacing="linspace_rounded",
        initial_noise="vp",
        description="DPM-Solver++ third-order multistep",
        img2img_needs_prior=True,
    ),
    _spec(
        "dpmpp_3m_sde",
        "DPM++ 3M SDE",
        sample_dpmpp_3m_sde,
        aliases=("dpm++_3m_sde", "k_dpmpp_3m_sde"),
        stochastic=True,
        karras_timesteps="round",
        exponential_timesteps="floor",
        spacing="linspace_rounded",
        initial_noise="vp",
        description="stochastic DPM-Solver++ third-order multistep",
        eta=1.0,
        img2img_needs_prior=True,
    ),
    _spec(
        "dpmpp_2s_a",
        "DPM++ 2S a",
        sample_dpmpp_2s_ancestral,
        aliases=("dpm++_2s_a", "dpmpp_2s_ancestral", "k_dpmpp_2s_a", "k_dpmpp_2s_ancestral"),
        stochastic=True,
        description="single-step DPM-Solver++(2S) with ancestral noise; two model calls a step",
        eta=1.0,
        eta_settable=True,
    ),
    _spec(
        "restart",
        "Restart",
        sample_restart,
        aliases=("restart_sampling",),
        stochastic=True,
        description="Heun with two noisy returns from σ 2 to σ 0.1 (Xu et al. 2023); more model calls",
    ),
    _spec(
        "dpmpp_sde",
        "DPM++ SDE",
        sample_dpmpp_sde,
        aliases=("dpm++_sde", "k_dpmpp_sde"),
        stochastic=True,
        description="stochastic DPM-Solver++(2S); two model calls a step",
        eta=1.0,
    ),
    _spec(
        "unipc",
        "UniPC",
        sample_unipc,
        aliases=("uni_pc",),
        karras_timesteps="round",
        exponential_timesteps="floor",
        spacing="linspace_rounded",
        initial_noise="vp",
        description="UniPC predictor-corrector, order 2",
    ),
    _spec(
        "lcm",
        "LCM",
        sample_lcm,
        aliases=("lcm_scheduler",),
        stochastic=True,
        spacing="lcm",
        initial_noise="vp",
        description="latent consistency model sampling, 1-50 steps; needs an LCM-distilled model",
    ),
]

_ALL = [
    named
    for spec in _PLAIN
    for named in ((spec, _karras(spec)) if spec.name in _WITH_KARRAS_NAME else (spec,))
]
SAMPLERS: dict[str, SamplerSpec] = {spec.name: spec for spec in _ALL}

_LOOKUP: dict[str, SamplerSpec] = {}
for _spec_entry in _ALL:
    for _key in (_spec_entry.name, _spec_entry.display_name, *_spec_entry.aliases):
        assert _LOOKUP.get(_key.lower(), _spec_entry) is _spec_entry, f"{_key!r} names two samplers"
        _LOOKUP[_key.lower()] = _spec_entry


def get_sampler(name: str) -> SamplerSpec:
    """The spec for a canonical name, A1111 display name or alias, case-insensitively."""
    spec = _LOOKUP.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return spec


def sampler_names() -> list[str]:
    """Canonical sampler names, in the order a UI should list them."""
    return list(SAMPLERS)
