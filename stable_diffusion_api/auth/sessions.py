"""Login sessions: the signed token the login cookie holds (never the key or a password).

A token is `v1.<payload>.<signature>`, both parts base64url: the payload is JSON with the
subject ("key" or "user:<name>"), when it was issued and when it expires, and a random nonce;
the signature is HMAC-SHA256 under a key derived from

- the server's secret, 32 random bytes in `<data>/.dali-session-secret` (mode 0600, made on
  first use), so nobody without the data folder can make a token, and a stolen token is no
  oracle for guessing the password; and
- the digest of the subject's credential as configured now, so a changed key or password, or
  a user taken out of DALI_API_AUTH, ends that credential's sessions at once.

A token past its expiry, signed otherwise, malformed or logged out is refused. Logging out
remembers the token (in memory, until it would have expired anyway): a copy of the cookie
is refused too, until the server restarts.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

from stable_diffusion_api.auth.credentials import Credentials

SECRET_FILE = ".dali-session-secret"
SECRET_BYTES = 32
VERSION = "v1"
MAX_TOKEN_CHARS = 1024


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path`, made (random, mode 0600) when there is none. Created under a
    temporary name and linked into place, so two processes starting at once agree on one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(SECRET_BYTES).hex().encode("ascii"))
                handle.flush()
                os.fsync(handle.fileno())
            # Fails when another process made one meanwhile: then that one is the secret.
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # copied or restored with looser permissions: tighten them
    try:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (ValueError, UnicodeDecodeError):
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise RuntimeError(
            f"the session secret {str(path)!r} is damaged: delete it (a new one is made at the "
            "next login, and everyone logs in again)"
        )
    return secret


class SessionSigner:
    """Issues and checks session tokens for `credentials`, valid `lifetime_s` seconds."""

    def __init__(
        self,
        secret_file: Path,
        credentials: Credentials,
        lifetime_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret_file = secret_file
        self.credentials = credentials
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._secret: bytes | None = None
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}  # signature → when its token expires

    def server_secret(self) -> bytes:
        """The server's secret, read (or made) on first use, not when the app is built:
        importing the app writes nothing into the data folder. The app's start-up calls this
        (in a thread), so no request waits on the file."""
        with self._lock:
            if self._secret is None:
                self._secret = load_or_create_secret(self.secret_file)
            return self._secret

    def _signature(self, subject: str, payload: str) -> str | None:
        bound_to = self.credentials.subject_digest(subject)
        if bound_to is None:
            return None
        material = b"dali-session\0" + subject.encode("utf-8") + b"\0" + bound_to
        key = hmac.new(self.server_secret(), material, hashlib.sha256).digest()
        return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, subject: str, now: float | None = None) -> str:
        """A token for `subject` ("key" or "user:<name>"), issued at `now` (default: the
        clock)."""
        issued = self.clock() if now is None else now
        body = {
            "sub": subject,
            "iat": int(issued),
            "exp": int(issued + self.lifetime_s),
            "n": secrets.token_urlsafe(12),
        }
        payload = _b64(json.dumps(body, separators=(",", ":")).encode("utf-8"))
        signature = self._signature(subject, payload)
        if signature is None:
            raise ValueError(f"no credential is configured for {subject!r}")
        return f"{VERSION}.{payload}.{signature}"

    def verify(self, token: str) -> str | None:
        """The subject of a valid, unexpired token; None for anything else."""
        parsed = self._parse(token)
        if parsed is None:
            return None
        subject, payload, signature, expires = parsed
        expected = self._signature(subject, payload)
        if expected is None or not hmac.compare_digest(signature, expected):
            return None
        if expires <= self.clock():
            return None
        with self._lock:
            if signature in self._revoked:
                return None
        return subject

    def revoke(self, token: str) -> None:
        """Log `token` out: refused from now on (if it was valid at all)."""
        parsed = self._parse(token)
        if parsed is None or self.verify(token) is None:
            return
        _, _, signature, expires = parsed
        now = self.clock()
        with self._lock:
            for old in [s for s, until in self._revoked.items() if until <= now]:
                del self._revoked[old]  # expired anyway: no need to remember it
            self._revoked[signature] = expires

    @staticmethod
    def _parse(token: str) -> tuple[str, str, str, float] | None:
        """(subject, payload, signature, expiry) of a well-formed token, else None."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
            return None
        version, payload, signature = token.split(".")
        if version != VERSION or not payload.isascii() or not signature.isascii():
            return None
        try:
            body = json.loads(_unb64(payload))
        except (binascii.Error, ValueError):  # bad base64, bad UTF-8, bad JSON
            return None
        if not isinstance(body, dict):
            return None
        subject, expires = body.get("sub"), body.get("exp")
        if not isinstance(subject, str) or not isinstance(expires, int):
            return None
        return subject, payload, signature, float(expires)
