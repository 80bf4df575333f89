"""The configured credentials: the API key (DALI_API_KEY) and users (DALI_API_AUTH).

Both are read once, when the app is built, and a value that cannot be right refuses the start
with `AuthConfigError` (which names the variable and what is allowed, never the value: it holds
a password). Every comparison hashes both sides to SHA-256 first and compares the digests with
`hmac.compare_digest`, so neither the content nor the length of a secret shows in the timing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import SecretStr

KEY_SUBJECT = "key"
USER_PREFIX = "user:"
AUTH_FORMAT = "write user:password pairs separated by commas, e.g. ann:pass-one,ben:pass-two"


class AuthConfigError(ValueError):
    """DALI_API_KEY or DALI_API_AUTH cannot be used; the message says which and why."""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _same(presented: str, expected_digest: bytes) -> bool:
    return hmac.compare_digest(_digest(presented), expected_digest)


def _secret_text(value: SecretStr | str | None) -> str | None:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def parse_key(value: SecretStr | str | None) -> str | None:
    """DALI_API_KEY: None when unset; an empty key, or one with spaces around it (which no
    header can carry), is an AuthConfigError."""
    key = _secret_text(value)
    if key is None:
        return None
    if not key.strip():
        raise AuthConfigError(
            "DALI_API_KEY is set but empty: set it to a key (a long random string, e.g. from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`) or unset it"
        )
    if key != key.strip():
        raise AuthConfigError(
            "DALI_API_KEY starts or ends with white space, which HTTP headers cannot carry: "
            "remove it"
        )
    return key


def parse_users(value: SecretStr | str | None) -> dict[str, str]:
    """DALI_API_AUTH, "user:password[,user2:password2]": a password may hold ":" (the entry
    is split at its first one) but not ","; spaces around an entry are dropped. Unset gives
    no users; an empty value, an entry without ":", an empty user name or password, or a
    user named twice is an AuthConfigError that names the entry by its number."""
    raw = _secret_text(value)
    if raw is None:
        return {}
    if not raw.strip():
        raise AuthConfigError(f"DALI_API_AUTH is set but empty: {AUTH_FORMAT}, or unset it")
    users: dict[str, str] = {}
    for number, entry in enumerate(raw.split(","), start=1):
        user, colon, password = entry.strip().partition(":")
        problem = None
        if not colon:
            problem = "has no ':' between user and password"
        elif not user:
            problem = "has an empty user name"
        elif not password:
            problem = "has an empty password"
        elif user in users:
            problem = "names a user an earlier entry already named"
        if problem is not None:
            # The entry itself is never echoed: it holds a password.
            raise AuthConfigError(f"DALI_API_AUTH entry {number} {problem}; {AUTH_FORMAT}")
        users[user] = password
    return users


@dataclass(frozen=True)
class Credentials:
    """What a request may present: the key, or a user's name and password. Only digests are
    kept: the key and the passwords themselves are dropped once parsed."""

    key_digest: bytes | None = None
    user_digests: Mapping[str, bytes] = field(default_factory=dict)

    @classmethod
    def parse(
        cls, api_key: SecretStr | str | None, api_auth: SecretStr | str | None
    ) -> Credentials:
        key = parse_key(api_key)
        users = parse_users(api_auth)
        return cls(
            _digest(key) if key is not None else None,
            {user: _digest(password) for user, password in users.items()},
        )

    @property
    def enabled(self) -> bool:
        """Whether anything is configured (else every route is open)."""
        return self.key_digest is not None or bool(self.user_digests)

    @property
    def has_key(self) -> bool:
        return self.key_digest is not None

    @property
    def has_users(self) -> bool:
        return bool(self.user_digests)

    def key_ok(self, presented: str) -> bool:
        return self.key_digest is not None and _same(presented, self.key_digest)

    def user_ok(self, user: str, password: str) -> bool:
        expected = self.user_digests.get(user)
        # Compare against something for an unknown user too: the timing tells no names apart.
        ok = _same(password, expected if expected is not None else _digest(""))
        return ok and expected is not None

    def check_password(self, user: str, password: str) -> str | None:
        """The subject that `user` and `password` sign in as — "user:<name>" for a user's own
        pair, "key" when the password is the API key (whatever the name) — or None."""
        if user and self.user_ok(user, password):
            return USER_PREFIX + user
        if self.key_ok(password):
            return KEY_SUBJECT
        return None

    def subject_digest(self, subject: str) -> bytes | None:
        """The digest of the credential behind `subject` now (None: no such credential), which
        a session is bound to: a new key or password ends the sessions of the old one."""
        if subject == KEY_SUBJECT:
            return self.key_digest
        if subject.startswith(USER_PREFIX):
            return self.user_digests.get(subject.removeprefix(USER_PREFIX))
        return None
