"""Who a request is: one check for every route, the mounted Gradio UI and the login form.

A request may present, in this order of precedence:

1. explicit credentials — the API key in `X-API-Key` or as `Authorization: Bearer <key>`, or
   HTTP Basic with a DALI_API_AUTH user's name and password, or with the API key as the
   password (any user name; A1111 clients and Gradio's login ask for a name);
2. the login cookie: a signed session token (`sessions.py`), never the key or a password.

Explicit credentials that are wrong are a failed attempt (`limiter.py`) and are refused even
when a cookie is valid too. A cookie that is not valid is no credential at all: not counted,
as a browser sends an expired one on every request until its user logs in again.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

from starlette.requests import HTTPConnection

from stable_diffusion_api.auth.credentials import USER_PREFIX, Credentials
from stable_diffusion_api.auth.limiter import FailureLimiter
from stable_diffusion_api.auth.sessions import SECRET_FILE, SessionSigner
from stable_diffusion_api.config import Settings

SESSION_COOKIE = "dali_session"
# The cookie before sessions, which held the key itself: ignored, and deleted at login/logout.
LEGACY_COOKIE = "dali_api_key"
# Where `AuthGuard` leaves the request's `Identity` (None: no valid credentials).
SCOPE_KEY = "dali.identity"
REALM = 'realm="Dali"'

Method = Literal["open", "key", "user", "session"]


@dataclass(frozen=True)
class Identity:
    """Who a request was let in as: `open` (no authentication configured), `key` (the API key,
    in a header or as a Basic password), `user` (a DALI_API_AUTH user over Basic), `session`
    (the login cookie; `token` is its value, for logging out)."""

    method: Method
    user: str | None = None
    token: str | None = None


OPEN = Identity("open")


@dataclass(frozen=True)
class Verdict:
    """The outcome of looking at a request: an identity, or none, and whether credentials
    were offered and wrong (`failed`), or not looked at because the client is locked out
    (`retry_after_s`)."""

    identity: Identity | None
    failed: bool = False
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Login:
    """The outcome of a login: a session `token`, or none, and when locked out the seconds
    to wait."""

    token: str | None = None
    retry_after_s: float | None = None


def client_address(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client else "unknown"


def _basic(value: str) -> tuple[str, str] | None:
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


class Authenticator:
    """The credentials, the sessions signed for them and the failure limiter, with the one
    check every request goes through (`inspect`)."""

    def __init__(
        self, credentials: Credentials, sessions: SessionSigner, limiter: FailureLimiter
    ) -> None:
        self.credentials = credentials
        self.sessions = sessions
        self.limiter = limiter

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """Built once per app; a malformed DALI_API_KEY or DALI_API_AUTH raises
        `AuthConfigError` here, so the server refuses to start rather than fail requests."""
        credentials = Credentials.parse(settings.api_key, settings.api_auth)
        sessions = SessionSigner(
            settings.resolved_data_dir / SECRET_FILE, credentials, settings.session_hours * 3600
        )
        return cls(credentials, sessions, FailureLimiter())

    @property
    def enabled(self) -> bool:
        return self.credentials.enabled

    def inspect(self, connection: HTTPConnection) -> Verdict:
        """Who `connection` is. Counts a failed attempt against its address."""
        if not self.enabled:
            return Verdict(OPEN)
        presented = self._explicit(connection)
        if presented is None:
            token = connection.cookies.get(SESSION_COOKIE)
            subject = self.sessions.verify(token) if token else None
            if subject is None:
                return Verdict(None)
            return Verdict(Identity("session", self._user_of(subject), token))
        client = client_address(connection)
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return Verdict(None, retry_after_s=wait)
        identity = self._check(presented)
        if identity is None:
            self.limiter.failed(client)
            return Verdict(None, failed=True)
        return Verdict(identity)

    def login(self, client: str, user: str, password: str) -> Login:
        """The login form's check: a session token for the right credentials, nothing (and a
        counted failure) for wrong ones, the wait when `client` is locked out."""
        wait = self.limiter.retry_after(client)
        if wait is not None:
            return Login(retry_after_s=wait)
        subject = self.credentials.check_password(user.strip(), password)
        if subject is None:
            self.limiter.failed(client)
            return Login()
        return Login(token=self.sessions.issue(subject))

    def check_password(self, user: str, password: str) -> bool:
        """For a login form that does its own limiting (Gradio's, served alone)."""
        return self.credentials.check_password(user, password) is not None

    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401: Basic (A1111 clients, and a password manager
        in a browser) first when users are configured, Bearer when a key is."""
        schemes = ["Basic"] if self.credentials.has_users else []
        if self.credentials.has_key:
            schemes += ["Bearer", "Basic"] if not schemes else ["Bearer"]
        return ", ".join(f"{scheme} {REALM}" for scheme in schemes)

    def what_to_send(self) -> str:
        """The 401's message: the ways in that this server's configuration offers."""
        ways = []
        if self.credentials.has_key:
            ways.append("the API key (header X-API-Key, or Authorization: Bearer <key>)")
        if self.credentials.has_users:
            ways.append("HTTP Basic with a user and password of DALI_API_AUTH")
        if self.credentials.has_key:
            ways.append("HTTP Basic with the API key as the password")
        ways.append("the cookie of a login at /login")
        return "authentication required: send " + ", or ".join(ways)

    def _explicit(self, connection: HTTPConnection) -> tuple[str, str] | str | None:
        """The key or (user, password) a request presents itself, or None. A malformed
        Authorization header counts as a wrong password."""
        key = connection.headers.get("x-api-key", "").strip()
        if key:
            return key
        scheme, _, value = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if scheme.lower() == "basic":
            return _basic(value) or ("", "")
        return None

    def _check(self, presented: tuple[str, str] | str) -> Identity | None:
        if isinstance(presented, str):
            return Identity("key") if self.credentials.key_ok(presented) else None
        subject = self.credentials.check_password(*presented)
        if subject is None:
            return None
        user = self._user_of(subject)
        return Identity("user", user) if user is not None else Identity("key")

    @staticmethod
    def _user_of(subject: str) -> str | None:
        return subject.removeprefix(USER_PREFIX) if subject.startswith(USER_PREFIX) else None
