"""Domain errors, and the one place that turns them into HTTP responses.

Services raise these; they know nothing of HTTP. `install_error_handlers` maps them:
NotFound → 404, Conflict → 409, InvalidField → 422 (in FastAPI's own field-error shape, so a
client handles our checks and pydantic's the same way), QueueFull → 429 with Retry-After.
Requests for pages (not under /api or /sdapi) get the HTML error view instead of JSON.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from stable_diffusion_api.error_text import human_message

log = logging.getLogger(__name__)


class DomainError(Exception):
    """Base of the errors services raise; `message` is safe to show to the user."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    status_code = 404

    def __init__(self, kind: str, ident: object) -> None:
        super().__init__(f"{kind} {ident!r} not found")
        self.kind = kind


class Conflict(DomainError):
    status_code = 409


class StoreUnavailable(DomainError):
    """The file store (an S3 bucket) cannot be reached or refused the request now, after the
    client's own retries: a 503, never a 500 (the file may well be there)."""

    status_code = 503

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"the file store {store} cannot be reached now ({reason}); try again")
        self.reason = reason


class InvalidField(DomainError):
    """A value the schema could not judge alone (unknown model, absent device, …)."""

    status_code = 422

    def __init__(self, field: str, value: object, allowed: str, location: str = "body") -> None:
        super().__init__(f"{field}: {value!r} is not allowed; {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed
        self.location = location

    def renamed(self, field: str) -> InvalidField:
        """The same refusal of the same value, naming the field as another API spells it."""
        return InvalidField(field, self.value, self.allowed, self.location)

    def detail(self) -> list[dict[str, Any]]:
        return [
            {
                "type": "value_error",
                "loc": [self.location, *self.field.split(".")],
                "msg": self.message,
                "input": self.value if isinstance(self.value, str | int | float | None) else None,
            }
        ]


class QueueFull(DomainError):
    status_code = 429

    def __init__(self, limit: int, retry_after_s: float) -> None:
        super().__init__(f"the queue is full ({limit} jobs waiting); retry later")
        self.retry_after_s = retry_after_s


# The machine-facing paths: JSON errors, and a 401 (never a login page) without credentials.
API_PATHS = ("/api/", "/sdapi/", "/internal/")


def wants_html(request: Request) -> bool:
    """Page requests get the HTML error view; API clients always get JSON."""
    path = request.url.path
    if path.startswith((*API_PATHS, "/static/")):
        return False
    return "text/html" in request.headers.get("accept", "")


HtmlRenderer = Callable[[Request, int, str, list[str]], Response]


HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """The `Allow` header of a 405: every method some route serves at this path. Starlette
    names only those of the first route whose path matched, though GET and POST of one path
    are two routes (HTTP says Allow lists them all)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


UNPAIRED_SURROGATE = (
    "text must be valid Unicode: it holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)"
)


def install_error_handlers(app: FastAPI, render_html: HtmlRenderer) -> None:
    """Register every handler; `render_html(request, status, title, details)` draws the view."""

    def respond(
        request: Request,
        status: int,
        detail: Any,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> Response:
        if wants_html(request):
            details = [str(d.get("msg", d)) for d in detail] if isinstance(detail, list) else []
            response = render_html(request, status, message, details)
            if headers:
                response.headers.update(headers)
            return response
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    async def domain_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        if isinstance(exc, InvalidField):
            return respond(request, 422, exc.detail(), "Some values need fixing")
        headers: dict[str, str] = {}
        if isinstance(exc, QueueFull):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return respond(request, exc.status_code, exc.message, exc.message, headers)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"type": error["type"], "loc": error["loc"], "msg": human_message(error)}
            for error in exc.errors()
        ]
        return respond(request, 422, errors, "Some values need fixing")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405 and headers is not None and "Allow" in headers:
            headers["Allow"] = allowed_methods(request)
        return respond(request, exc.status_code, exc.detail, str(exc.detail), headers)

    async def unencodable_text(request: Request, exc: Exception) -> Response:
        # JSON may spell a lone UTF-16 surrogate ("\\ud800"), which no database can store; the
        # REST schemas refuse it by field, this catches any other text field that carried one.
        detail = [{"type": "value_error", "loc": ["body"], "msg": UNPAIRED_SURROGATE}]
        return respond(request, 422, detail, "Some values need fixing")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(request, 500, "internal error", "Something went wrong on our side")

    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(UnicodeEncodeError, unencodable_text)
    app.add_exception_handler(Exception, unexpected)
