"""Authentication: one model for the whole app.

Configured by DALI_API_KEY (an API key) and DALI_API_AUTH (users, "user:password,…"); with
neither, everything is open. With either, every request needs credentials — the key, a user's
password, or the login cookie's signed session — except the few open paths `guard.is_open`
lists. The parts:

- `credentials.py`: parsing (a malformed value refuses the start) and constant-time checks;
- `sessions.py`: the login cookie's signed, expiring session tokens;
- `limiter.py`: failed attempts per client address (5 a minute, then 429);
- `authenticator.py`: who a request is, from what it presents;
- `guard.py`: the ASGI middleware in front of every route, the mounted Gradio UI included.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from stable_diffusion_api.auth.authenticator import (
    LEGACY_COOKIE,
    SCOPE_KEY,
    SESSION_COOKIE,
    Authenticator,
    Identity,
)
from stable_diffusion_api.auth.credentials import AuthConfigError
from stable_diffusion_api.auth.guard import AuthGuard

__all__ = [
    "LEGACY_COOKIE",
    "SESSION_COOKIE",
    "AuthConfigError",
    "AuthGuard",
    "Authenticator",
    "Identity",
    "identity_of",
]


def identity_of(connection: HTTPConnection) -> Identity | None:
    """Who `AuthGuard` let this request in as (None: nobody, on an open path)."""
    identity: Identity | None = connection.scope.get(SCOPE_KEY)
    return identity
