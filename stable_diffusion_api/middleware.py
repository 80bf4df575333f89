"""ASGI middleware every response passes: a request-body limit and security headers.

- `BodyLimit`: a body over `limit` bytes is answered 413 before the app reads it — at once when
  Content-Length says so, else as soon as the chunks received pass the limit — so one huge
  request cannot take the server's memory (the largest legitimate body, an img2img upload with
  its mask, is two base64 images of at most `schemas.MAX_UPLOAD_CHARS` characters).
- `SecurityHeaders`: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
  `Referrer-Policy: same-origin`, and a Content-Security-Policy that lets the pages run only
  the studio's own script (no inline script anywhere). The mounted Gradio UI brings inline
  scripts of its own, so it gets every header but the CSP; /docs and /redoc set a policy of
  their own (routes/api_docs.py).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
# Paths whose pages carry inline scripts they need: no studio CSP there (Gradio has none; the
# OpenAPI docs pages set their own).
CSP_EXEMPT = ("/gradio", "/docs", "/redoc")


async def _answer_413(send: Send, limit: int, size: int | None) -> None:
    told = f"{size} bytes" if size is not None else "more"
    body = json.dumps(
        {
            "detail": f"the request body ({told}) is over the limit of {limit} bytes "
            "(DALI_MAX_BODY_MB); send a smaller body"
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _answer_413(send, self.limit, int(length))
            return
        if length is not None:  # the server holds the body to its Content-Length
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read up to the limit here, then replay it to the app.
        chunks: list[Message] = []
        received = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            received += len(message.get("body", b""))
            if received > self.limit:
                await _answer_413(send, self.limit, None)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = list(HEADERS)
        if not path.startswith(CSP_EXEMPT):
            extra.append((b"content-security-policy", CSP.encode()))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in extra if name not in present
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "testserver")
UNSAFE_METHODS = (b"POST", b"PUT", b"PATCH", b"DELETE")


def _host_name(host: str) -> str:
    """`example.org:8000` → `example.org`; `[::1]:8000` → `::1`."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _refuse(send: Send, status: int, message: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"detail": message}).encode()})


class SameOrigin:
    """Cross-site request forgery and DNS rebinding, refused before any route runs.

    - The Host header must name this server (`allowed_hosts`; any host when the server is bound
      to all interfaces, where a LAN name or address is expected): a page of evil.example whose
      name was re-pointed at 127.0.0.1 reaches us with `Host: evil.example` → 421.
    - A state-changing request (POST, PUT, PATCH, DELETE) that a browser marks with an Origin
      (or, lacking one, a Referer) from another origin → 403. API clients send neither and are
      unaffected; the studio's own pages and the mounted Gradio UI send their own origin.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and _host_name(host).lower() not in self.allowed_hosts:
            await _refuse(
                send, 421, f"this server does not answer to the host {host!r} (DALI_ALLOWED_HOSTS)"
            )
            return
        if scope["type"] == "http" and scope.get("method", "").encode() in UNSAFE_METHODS:
            origin = headers.get(b"origin", b"").decode("latin-1")
            if not origin or origin == "null":
                referer = headers.get(b"referer", b"").decode("latin-1")
                origin = "/".join(referer.split("/", 3)[:3]) if "://" in referer else ""
            if origin and origin.split("://", 1)[-1].lower() != host.lower():
                await _refuse(
                    send,
                    403,
                    f"a request from {origin} may not change anything here: only this site's "
                    "own pages (or API clients) can",
                )
                return
        await self.app(scope, receive, send)
