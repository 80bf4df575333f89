"""The login form and logout: the pages' way to a session cookie (`stable_diffusion_api.auth`).

`POST /login` takes a DALI_API_AUTH user's name and password, or the API key as the password
(the name left empty), and answers with the session cookie: a signed, expiring token, never
the key or the password; `HttpOnly`, `SameSite=Strict`, and `Secure` when the request came over
HTTPS (as uvicorn reports it: it honours `X-Forwarded-Proto` only from the proxies it trusts,
`--forwarded-allow-ips`, by default 127.0.0.1). Failed logins count towards the client's limit
(5 a minute, then 429 with Retry-After). `POST /logout` ends the session and clears the cookie.
Both paths are open: the guard lets them through without credentials.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from stable_diffusion_api.auth import LEGACY_COOKIE, SESSION_COOKIE, Authenticator
from stable_diffusion_api.auth.authenticator import client_address
from stable_diffusion_api.deps import AuthDep
from stable_diffusion_api.routes.templating import render

router = APIRouter(include_in_schema=False)
NextPath = Annotated[str, Query(max_length=500)]


def local_path(target: str) -> str:
    """`target` when it is a path on this site, else "/": a login link must not be able to
    send anyone to another site (`//evil.example`, and `/\\evil.example`, which browsers read
    as the same)."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _form(
    request: Request, auth: Authenticator, next_path: str, error: str | None, status: int = 200
) -> Response:
    context = {
        "next": next_path,
        "error": error,
        "has_users": auth.credentials.has_users,
        "has_key": auth.credentials.has_key,
    }
    return render(request, "login.html", context, status)


@router.get("/login")
def login_form(request: Request, auth: AuthDep, next: NextPath = "/") -> Response:
    if not auth.enabled:  # nothing to log in to
        return RedirectResponse(local_path(next), status_code=303)
    return _form(request, auth, next, None)


@router.post("/login")
def login(
    request: Request,
    auth: AuthDep,
    password: Annotated[str, Form(max_length=500)],
    username: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "/",
) -> Response:
    target = local_path(next)
    if not auth.enabled:
        return RedirectResponse(target, status_code=303)
    outcome = auth.login(client_address(request), username, password)
    if outcome.retry_after_s is not None:
        response = _form(request, auth, next, auth.limiter.message(outcome.retry_after_s), 429)
        response.headers["Retry-After"] = str(math.ceil(outcome.retry_after_s))
        return response
    if outcome.token is None:
        kinds = (auth.credentials.has_users, auth.credentials.has_key)
        wrong = {(True, False): "wrong user name or password", (False, True): "wrong key"}.get(
            kinds, "wrong user name, password or key"
        )
        return _form(request, auth, next, wrong, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        outcome.token,
        max_age=int(auth.sessions.lifetime_s),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LEGACY_COOKIE)  # the old cookie held the key itself
    return response


@router.post("/logout")
def logout(request: Request, auth: AuthDep) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        auth.sessions.revoke(token)
    response = RedirectResponse("/login" if auth.enabled else "/", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=request.url.scheme == "https", httponly=True,
        samesite="strict",
    )  # fmt: skip
    response.delete_cookie(LEGACY_COOKIE)
    return response
