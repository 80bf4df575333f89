"""The DDPM training noise schedule of SD v1.x, seen in k-diffusion's "sigma space".

Training noises a latent as x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·ε. Dividing by sqrt(ᾱ_t) gives
the variance-exploding form the samplers work in (Karras et al. 2022):

    x = x0 + σ_t·ε,    σ_t = sqrt((1 - ᾱ_t) / ᾱ_t),    and back: x_t = x / sqrt(σ_t² + 1).

`NoiseSchedule` holds ᾱ_t and σ_t for the integer training timesteps t = 0 … 999 and converts
between σ and (fractional) t. It also builds the inference timesteps each diffusers scheduler
uses ("leading", "linspace", rounded linspace, Karras), so a sampler's σ schedule equals its
diffusers scheduler's. Where diffusers feeds the UNet a timestep that is not simply a function
of σ (Karras σ's with rounded timesteps, linearly interpolated σ's at fractional t), the
timestep travels with the σ schedule as a `SigmaSchedule`; see `sd_core.samplers.SamplerSpec`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from sd_core.config import ScheduleConfig

Interpolation = Literal["log", "linear"]
# How a σ schedule's UNet timesteps come from its σ's: sigma_to_t as is, rounded, or truncated.
TimestepRounding = Literal["exact", "round", "floor"]


@dataclass(frozen=True)
class SigmaSchedule:
    """An inference schedule: the σ a sampler visits and the UNet timestep that goes with each.

    sigmas: (N+1,) float64, decreasing; the last entry is where sampling ends (0, or σ at t=0).
    timesteps: (N,) float64, the timestep diffusers feeds the UNet together with sigmas[i].
    """

    sigmas: Tensor
    timesteps: Tensor


class NoiseSchedule:
    """ᾱ_t and σ_t of the "scaled_linear" schedule: betas = linspace(sqrt(β_0), sqrt(β_T)) ** 2.

    alphas_cumprod: (T,) float64, ᾱ_t for t = 0 … T-1.
    sigmas: (T,) float64, σ_t = sqrt((1 - ᾱ_t) / ᾱ_t), increasing from ~0.029 to ~14.6.
    log_sigmas: (T,) float64, log σ_t.
    """

    def __init__(self, config: ScheduleConfig) -> None:
        if config.num_train_timesteps < 2:
            raise ValueError(
                f"num_train_timesteps must be at least 2, got {config.num_train_timesteps}"
            )
        if not 0.0 < config.beta_start < config.beta_end < 1.0:
            raise ValueError(
                "beta_start and beta_end must satisfy 0 < beta_start < beta_end < 1, "
                f"got {config.beta_start} and {config.beta_end}"
            )
        self.config = config
        self.num_train_timesteps = config.num_train_timesteps
        # Built in float32 exactly as diffusers builds it (and then widened), so every σ here
        # equals the one diffusers' schedulers use to the last bit; the float64 cumprod of the
        # original LDM code differs from it by ~1e-6 relative.
        betas = (
            torch.linspace(
                config.beta_start**0.5,
                config.beta_end**0.5,
                config.num_train_timesteps,
                dtype=torch.float32,
            )
            ** 2
        )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.alphas_cumprod: Tensor = alphas_cumprod.double()
        self.sigmas: Tensor = sigmas.double()
        self.log_sigmas: Tensor = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        """σ at t = 0, the smallest noise level the model was trained on."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """σ at t = T-1, the largest noise level the model was trained on."""
        return float(self.sigmas[-1])

    # ---------------------------------------------------------------- σ <-> t

    def sigma_to_t(self, sigma: Tensor, interpolation: Interpolation = "log") -> Tensor:
        """Fractional timestep of each σ, by piecewise-linear interpolation between integer t.

        sigma: any shape, dtype and device → same shape, float64 on the CPU (the UNet moves its
        timesteps to its own device), clamped to [0, T-1].
        interpolation "log" (default) interpolates in log σ, as k-diffusion and diffusers'
        `_sigma_to_t` do; "linear" interpolates in σ itself, the exact inverse of the
        `np.interp` diffusers uses to place σ at fractional linspace timesteps. Both give the
        integer t back (to float64 round-off) for σ = sigmas[t].
        """
        s = sigma.detach().to("cpu", torch.float64)
        if interpolation == "log":
            table, value = self.log_sigmas, s.clamp_min(1e-10).log()
        elif interpolation == "linear":
            table, value = self.sigmas, s
        else:
            raise ValueError(f"interpolation must be 'log' or 'linear', got {interpolation!r}")
        low = (torch.searchsorted(table, value.reshape(-1), right=True) - 1).clamp(
            0, len(table) - 2
        )
        low_value, high_value = table[low], table[low + 1]
        w = ((value.reshape(-1) - low_value) / (high_value - low_value)).clamp(0, 1)
        return (low + w).reshape(s.shape)

    def t_to_sigma(self, t: Tensor, interpolation: Interpolation = "log") -> Tensor:
        """σ at each fractional timestep; the inverse of `sigma_to_t` with the same interpolation.

        t: any shape, values in [0, T-1] → same shape, float64 on the CPU.
        """
        tt = t.detach().to("cpu", torch.float64)
        if bool(((tt < 0) | (tt > self.num_train_timesteps - 1)).any()):
            raise ValueError(
                f"t must lie in [0, {self.num_train_timesteps - 1}], got values from "
                f"{float(tt.min())} to {float(tt.max())}"
            )
        low = tt.floor().long().clamp(0, self.num_train_timesteps - 2)
        w = tt - low
        if interpolation == "log":
            return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()
        if interpolation == "linear":
            return (1 - w) * self.sigmas[low] + w * self.sigmas[low + 1]
        raise ValueError(f"interpolation must be 'log' or 'linear', got {interpolation!r}")

    # ------------------------------------------------------- inference spacing

    def _check_steps(self, steps: int) -> None:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if steps > self.num_train_timesteps:
            raise ValueError(
                f"steps must be at most num_train_timesteps ({self.num_train_timesteps}), "
                f"got {steps}"
            )

    def leading(self, steps: int, steps_offset: int = 1, final_sigma: float = 0.0) -> SigmaSchedule:
        """DDPM/DDIM/PNDM "leading" spacing: t_i = (N-1-i)·(T // N) + offset (10 → 901 … 1).

        final_sigma: where the last step lands; 0 for DDPM (ᾱ = 1), `sigma_min` for DDIM and
        PNDM with set_alpha_to_one=False (their last step lands on ᾱ_0).
        """
        self._check_steps(steps)
        ratio = self.num_train_timesteps // steps
        t = torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + steps_offset
        if int(t.max()) >= self.num_train_timesteps:
            raise ValueError(
                f"steps_offset {steps_offset} pushes timestep {int(t.max())} past "
                f"{self.num_train_timesteps - 1}"
            )
        sigmas = torch.cat([self.sigmas[t], torch.tensor([final_sigma], dtype=torch.float64)])
        return SigmaSchedule(sigmas, t.double())

    def linspace(self, steps: int) -> SigmaSchedule:
        """Euler/Heun/LMS/KDPM2 "linspace" spacing: N float32 timesteps from T-1 down to 0.

        σ at a fractional timestep is interpolated linearly in σ (diffusers' `np.interp`),
        and the schedule ends at σ = 0.
        """
        self._check_steps(steps)
        # float32 timesteps, as diffusers makes them; np.linspace rounds exactly like this.
        t = torch.linspace(0, self.num_train_timesteps - 1, steps, dtype=torch.float64)
        t = t.float().double().flip(0)
        sigmas = self.t_to_sigma(t, interpolation="linear")
        return SigmaSchedule(torch.cat([sigmas, sigmas.new_zeros(1)]), t)

    def linspace_rounded(self, steps: int) -> SigmaSchedule:
        """DPM-Solver/UniPC "linspace" spacing: linspace(0, T-1, N+1) rounded, the last dropped.

        10 steps → 999, 899, 799, 699, 599, 500, 400, 300, 200, 100; the schedule ends at σ = 0.
        """
        self._check_steps(steps)
        grid = torch.linspace(0, self.num_train_timesteps - 1, steps + 1, dtype=torch.float64)
        # np.round and torch.round both round half to even.
        t = grid.round().flip(0)[:-1].long()
        if bool((t[1:] == t[:-1]).any()):
            raise ValueError(
                f"steps must be at most {self.num_train_timesteps - 1} for this spacing "
                f"(more would repeat a timestep), got {steps}"
            )
        sigmas = torch.cat([self.sigmas[t], self.sigmas.new_zeros(1)])
        return SigmaSchedule(sigmas, t.double())

    def karras(
        self, steps: int, rho: float = 7.0, timesteps: TimestepRounding = "round"
    ) -> SigmaSchedule:
        """Karras et al. 2022 eq. (5): σ_i = (σ_max^(1/ρ) + i/(N-1)·(σ_min^(1/ρ) - σ_max^(1/ρ)))^ρ.

        σ_min and σ_max are the trained extremes; the schedule ends at σ = 0. The timesteps are
        `sigma_to_t` rounded to integers ("round"), as diffusers' DPM-Solver feeds them to the
        UNet, or left fractional ("exact"), as its Euler-family schedulers do.
        """
        self._check_steps(steps)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        min_inv, max_inv = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
        sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
        return self._with_timesteps(sigmas, timesteps)

    def exponential(self, steps: int, timesteps: TimestepRounding = "exact") -> SigmaSchedule:
        """σ's evenly spaced in log σ from σ_max down to σ_min (k-diffusion's
        `get_sigmas_exponential`, diffusers' `use_exponential_sigmas`), then σ = 0.

        timesteps: "exact" fractional `sigma_to_t` (diffusers' Euler family), or "floor", the
        integer part, which is what diffusers' DPM-Solver/UniPC feed (their int64 cast)."""
        self._check_steps(steps)
        log_sigmas = torch.linspace(
            math.log(self.sigma_max), math.log(self.sigma_min), steps, dtype=torch.float64
        )
        return self._with_timesteps(log_sigmas.exp(), timesteps)

    def trailing(self, steps: int) -> SigmaSchedule:
        """ "Trailing" spacing (Lin et al. 2023, table 2; A1111's "SGM Uniform" as diffusers
        spells it): t_i = round(T - i·T/N) - 1, so 10 steps → 999, 899, …, 99; then σ = 0."""
        self._check_steps(steps)
        ratio = self.num_train_timesteps / steps
        grid = torch.arange(self.num_train_timesteps, 0, -ratio, dtype=torch.float64)
        t = grid.round().long() - 1
        sigmas = torch.cat([self.sigmas[t], self.sigmas.new_zeros(1)])
        return SigmaSchedule(sigmas, t.double())

    def _with_timesteps(self, sigmas: Tensor, rounding: TimestepRounding) -> SigmaSchedule:
        t = self.sigma_to_t(sigmas)
        if rounding == "round":
            t = t.round()
        elif rounding == "floor":
            # Truncation is sensitive to the last bit: diffusers interpolates in a float32
            # table of log σ there, so σ_max maps to 998.99999… → 998; do the same.
            table = self.sigmas.float().log().double()
            value = sigmas.clamp_min(1e-10).log()
            low = (torch.searchsorted(table, value, right=True) - 1).clamp(0, len(table) - 2)
            w = ((value - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
            t = (low + w).floor()
        elif rounding != "exact":
            raise ValueError(f"timesteps must be 'exact', 'round' or 'floor', got {rounding!r}")
        return SigmaSchedule(torch.cat([sigmas, sigmas.new_zeros(1)]), t)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"NoiseSchedule(T={c.num_train_timesteps}, beta_start={c.beta_start}, "
            f"beta_end={c.beta_end}, sigma {self.sigma_min:.4f}…{self.sigma_max:.4f})"
        )
