"""`AuthGuard`: the ASGI middleware that lets a request in only with credentials.

It wraps the whole app (`create_app()` adds it), so every route — the JSON API, the pages, the
AUTOMATIC1111 API, the event streams, the OpenAPI docs, the Gradio UI mounted at /gradio,
websockets, and any route added later — is behind the same check (`Authenticator.inspect`).
Open without credentials, and only these (`is_open`):

- `/api/v1/health` (which then answers only "ok" or "unhealthy", no details),
- `/login` and `/logout`, `/static/…` (the login page needs its style sheet),
- `/internal/ping` (an empty answer, open in AUTOMATIC1111 too: clients probe it).

Without credentials, a browser's request for a page (one accepting text/html, outside the API
paths) is sent to `/login?next=…`; any other request gets 401 with `WWW-Authenticate` and a
JSON message that says what to send; a websocket is closed (1008). A client locked out by the
failure limit gets 429 with `Retry-After`.
"""

from __future__ import annotations

import math
from urllib.parse import quote

from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from stable_diffusion_api.auth.authenticator import SCOPE_KEY, Authenticator
from stable_diffusion_api.errors import API_PATHS

OPEN_PATHS = frozenset({"/api/v1/health", "/login", "/logout", "/internal/ping"})
OPEN_PREFIXES = ("/static/",)


def route_path(scope: Scope) -> str:
    """The path the app's routes see (without the `root_path` a proxy may put in front)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def wants_login_page(connection: HTTPConnection, path: str) -> bool:
    """A browser asking for a page (not the API) is shown the login form instead."""
    return not path.startswith(API_PATHS) and "text/html" in connection.headers.get("accept", "")


def login_location(connection: HTTPConnection, path: str) -> str:
    """`/login?next=<this page>`; after a refused form post, back to the home page."""
    target = path
    if connection.scope.get("method") not in ("GET", "HEAD"):
        target = "/"
    elif query := connection.scope.get("query_string", b""):
        target += "?" + query.decode("latin-1")
    return "/login?next=" + quote(target, safe="/")


class AuthGuard:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        connection = HTTPConnection(scope)
        verdict = self.auth.inspect(connection)
        scope[SCOPE_KEY] = verdict.identity
        path = route_path(scope)
        if verdict.identity is not None or is_open(path):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response: Response
        if verdict.retry_after_s is not None:
            response = JSONResponse(
                {"detail": self.auth.limiter.message(verdict.retry_after_s)},
                status_code=429,
                headers={"Retry-After": str(math.ceil(verdict.retry_after_s))},
            )
        elif not verdict.failed and wants_login_page(connection, path):
            response = RedirectResponse(login_location(connection, path), status_code=303)
        else:
            response = JSONResponse(
                {"detail": self.auth.what_to_send()},
                status_code=401,
                headers={"WWW-Authenticate": self.auth.challenge()},
            )
        await response(scope, receive, send)
