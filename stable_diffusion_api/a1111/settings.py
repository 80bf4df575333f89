"""What the AUTOMATIC1111 routes read from the environment, and the `--api-auth` credentials.

    DALI_API_AUTH        "user:password[,user2:password2]" — HTTP Basic auth on /sdapi/v1, like
                         A1111's `--api-auth` (on top of DALI_API_KEY when that is set)   (none)
    DALI_A1111_PROJECT   the project A1111 requests land in (header X-Dali-Project overrides) API

The service's `Settings` may grow the same two fields (`api_auth`, `a1111_project`); when it
has them they win, so there is one place to configure a deployment.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from stable_diffusion_api.config import Settings

DEFAULT_PROJECT = "API"


class A1111Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DALI_", frozen=True, extra="ignore")

    api_auth: SecretStr | None = None
    a1111_project: str = Field(default=DEFAULT_PROJECT, min_length=1, max_length=100)

    @classmethod
    def for_service(cls, service_settings: Settings) -> A1111Settings:
        """Read the environment, preferring the service settings' fields where they exist."""
        own = cls()
        auth = getattr(service_settings, "api_auth", None)
        project = getattr(service_settings, "a1111_project", None)
        return cls(
            api_auth=auth if auth is not None else own.api_auth,
            a1111_project=project if project else own.a1111_project,
        )


@dataclass(frozen=True)
class Credentials:
    """The user → password pairs of `--api-auth`; empty means Basic auth is off."""

    passwords: dict[str, str]

    @classmethod
    def parse(cls, text: SecretStr | str | None) -> Credentials:
        """Read "user:password,user2:password2". A password may hold ":" (split at the first
        one) but not ","; an entry without ":" or with an empty user is a ValueError."""
        raw = text.get_secret_value() if isinstance(text, SecretStr) else text
        passwords: dict[str, str] = {}
        if not raw or not raw.strip():
            return cls(passwords)
        for number, entry in enumerate(raw.split(","), start=1):
            user, colon, password = entry.strip().partition(":")
            if not colon or not user:
                # The entry itself is never echoed: it holds a password.
                raise ValueError(
                    f"DALI_API_AUTH entry {number} is not allowed; "
                    "write user:password pairs separated by commas"
                )
            passwords[user] = password
        return cls(passwords)

    @property
    def enabled(self) -> bool:
        return bool(self.passwords)

    def check(self, user: str, password: str) -> bool:
        """True when `user` exists and `password` is its password (constant-time compare)."""
        expected = self.passwords.get(user)
        # Compare against something even for an unknown user, so timing does not tell users apart.
        ok = secrets.compare_digest(password.encode(), (expected or "").encode())
        return ok and expected is not None
