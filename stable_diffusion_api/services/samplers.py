"""The sampler names the engine knows, and the mapping from any accepted spelling to one."""

from __future__ import annotations

from sd_core.params import HIRES_AUTOMATIC, GenerationParams, InvalidParam, check_sampler_eta
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.generator import Generator, SamplerSpec


class SamplerCatalog:
    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._specs: list[SamplerSpec] | None = None

    def list(self) -> list[SamplerSpec]:
        if self._specs is None:
            self._specs = self._generator.samplers()
        return self._specs

    def canonical(self, name: str | None, field: str = "sampler") -> str | None:
        """The canonical name for a canonical name, A1111 label or alias (any case).

        None stays None (the model's default sampler); unknown names raise InvalidField listing
        the valid ones.
        """
        if name is None:
            return None
        wanted = name.strip().casefold()
        for spec in self.list():
            spellings = (spec.name, spec.display_name, *spec.aliases)
            if wanted in (s.casefold() for s in spellings):
                return spec.name
        valid = ", ".join(f"{s.name} ({s.display_name})" for s in self.list())
        raise InvalidField(field, name, f"valid samplers: {valid}")

    def check(self, params: GenerationParams) -> None:
        """InvalidField naming the field when `params` ask a sampler for what it does not take:
        more steps than its limit (LCM: 50; `steps`, or `hires_steps` for the hires fix's
        second pass), a schedule type when it keeps its own timesteps (`scheduler`,
        `hires_scheduler`), an eta it has not (`eta`, for either pass). A sampler left to the model's default (None) is checked by the
        engine when the job runs."""
        passes = [(params.sampler, params.steps, params.scheduler, "")]
        if params.hires:
            hires_schedule = params.hires_scheduler or params.scheduler  # None: the first's
            passes.append(
                (
                    params.hires_sampler or params.sampler,
                    params.hires_steps or params.steps,  # 0: as the first pass
                    None if hires_schedule == HIRES_AUTOMATIC else hires_schedule,
                    "hires_",
                )
            )
        for name, steps, schedule, prefix in passes:
            spec = self.find(name)
            if spec is None:
                continue
            try:
                check_sampler_eta(spec.display_name, spec.eta, spec.eta_settable, params.eta)
            except InvalidParam as exc:
                raise InvalidField("eta", params.eta, str(exc)) from None
            if steps > spec.max_steps:
                raise InvalidField(
                    f"{prefix}steps",
                    steps,
                    f"{spec.display_name} takes 1 to {spec.max_steps} steps",
                )
            if schedule is not None and not spec.takes_schedule_type:
                raise InvalidField(
                    f"{prefix}scheduler", schedule,
                    f"{spec.display_name} has its own timesteps and takes no schedule type"
                    + ("; send automatic" if prefix else "; leave it out (Automatic)"),
                )  # fmt: skip

    def find(self, name: str | None) -> SamplerSpec | None:
        """The sampler of canonical name `name`; None for None or an unknown name."""
        return next((spec for spec in self.list() if spec.name == name), None)

    def display_name(self, name: str | None) -> str:
        for spec in self.list():
            if spec.name == name:
                return spec.display_name
        return "model default" if name is None else name
