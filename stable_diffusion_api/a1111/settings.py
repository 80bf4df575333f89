"""What the AUTOMATIC1111 routes read from the environment.

    DALI_A1111_PROJECT   the project A1111 requests land in (header X-Dali-Project overrides) API

A1111's `--api-auth` is DALI_API_AUTH, which the whole app honours (`stable_diffusion_api.auth`),
not only these routes.

The service's `Settings` may grow the field (`a1111_project`); when it has it, it wins, so there
is one place to configure a deployment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from stable_diffusion_api.config import Settings

DEFAULT_PROJECT = "API"


class A1111Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DALI_", frozen=True, extra="ignore")

    a1111_project: str = Field(default=DEFAULT_PROJECT, min_length=1, max_length=100)

    @classmethod
    def for_service(cls, service_settings: Settings) -> A1111Settings:
        """Read the environment, preferring the service settings' field where it exists."""
        own = cls()
        project = getattr(service_settings, "a1111_project", None)
        return cls(a1111_project=project if project else own.a1111_project)
