"""The sampler names the engine knows, and the mapping from any accepted spelling to one."""

from __future__ import annotations

from sd_core.params import GenerationParams
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

    def check_steps(
        self, params: GenerationParams, steps_field: str = "steps", hires_field: str = "hires_steps"
    ) -> None:
        """InvalidField naming `steps_field` (or `hires_field` for the hires fix's second pass)
        when `params` ask a sampler for more steps than it takes (LCM: 50). A sampler left to
        the model's default (None) is checked when the job runs."""
        checks = [(params.sampler, params.steps, steps_field)]
        if params.hires:
            hires_steps = params.hires_steps or params.steps  # 0: as the first pass
            checks.append((params.hires_sampler or params.sampler, hires_steps, hires_field))
        for name, steps, field in checks:
            spec = next((s for s in self.list() if s.name == name), None)
            if spec is not None and steps > spec.max_steps:
                raise InvalidField(
                    field, steps, f"{spec.display_name} takes 1 to {spec.max_steps} steps"
                )

    def display_name(self, name: str | None) -> str:
        for spec in self.list():
            if spec.name == name:
                return spec.display_name
        return "model default" if name is None else name
