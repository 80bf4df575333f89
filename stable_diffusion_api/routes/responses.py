"""The error answers a route may give, declared for its OpenAPI entry (`responses=`).

Every answer the API can send is in `/openapi.json`, so a client (and schemathesis, which
checks each status it receives against the schema: tests/api/test_schemathesis.py) knows it.
422 comes from FastAPI itself for every route that takes input. The bodies are those of
`errors.install_error_handlers` and the middleware: `{"detail": "<message>"}`.

Bad input is a 422 naming the field; only a body that is not JSON text at all (invalid UTF-8)
is FastAPI's 400, before any field can be named.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

Responses = dict[int | str, dict[str, Any]]


class Message(BaseModel):
    """An error's body: what went wrong, in words a user can act on."""

    detail: str


WHY = {
    400: "The body is not JSON text at all (not UTF-8, say); FastAPI cannot parse it",
    401: "A valid API key is required (DALI_API_KEY; X-API-Key header or Bearer token), or "
    "on /sdapi/v1 the HTTP Basic credentials of DALI_API_AUTH",
    403: "Refused: a browser request from another site (its Origin or Referer)",
    404: "No such project, generation or image (or the file asked for is gone)",
    409: "Conflicts with the current state (a name taken, a job already finished, …)",
    413: "The request body is over DALI_MAX_BODY_MB",
    421: "The Host header names a site this server does not answer to (DALI_ALLOWED_HOSTS)",
    429: "Too many: the queue is full (see Retry-After) or this client has too many streams",
    501: "AUTOMATIC1111 does this; Dali's A1111 API does not (the message says what instead)",
    503: "The database cannot be written (deleted or read-only); nothing was saved",
}

# Headers that come with an answer, for the schema.
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "string"},
    }
}


def errors(*codes: int) -> Responses:
    """`responses=` for a route that may answer each of `codes` with a `Message`."""
    return {code: {"model": Message, "description": WHY[code]} for code in codes}


# Every route (the Host check), and every route behind the API key.
ANY: Responses = errors(421)
GUARDED = errors(401, 421)
# On top, for every request that may change something (POST, PATCH, DELETE): a browser's
# cross-site request is refused, and so is a body over the limit.
UNSAFE = errors(403, 413)
BODY = UNSAFE | errors(400)  # ... that sends a JSON body
QUEUE_FULL: Responses = {429: {"model": Message, "description": WHY[429], "headers": RETRY_AFTER}}
