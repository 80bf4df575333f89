"""Dependencies for the routes: the studio, authentication, and "load or 404" — each once.

Routes declare what they need with these `Annotated` aliases, e.g.
`def read(project: ProjectDep) -> ProjectOut`; the studio comes from `app.state`, put there by
`create_app()`, so tests build an app with their own settings and fake generator.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Path, Request
from starlette.requests import HTTPConnection

from stable_diffusion_api.errors import DomainError, Unauthorized
from stable_diffusion_api.schemas import GenerationOut, ImageOut, ProjectOut
from stable_diffusion_api.services import Studio

API_KEY_COOKIE = "dali_api_key"
# Ids are 64-bit in the database; a larger number must be a 422, never an overflow.
Id = Annotated[int, Path(ge=1, le=2**62)]


# Cheap dependencies are `async def`: a plain `def` would cost a thread-pool round trip each
# (and a GIL hand-off that waits on the worker thread while it samples).
async def get_studio(request: Request) -> Studio:
    studio: Studio = request.app.state.studio
    return studio


StudioDep = Annotated[Studio, Depends(get_studio)]


def presented_key(request: HTTPConnection) -> str | None:
    """The API key a request (or websocket) carries: X-API-Key, a Bearer token, or the pages'
    login cookie."""
    header = request.headers.get("x-api-key")
    if header:
        return header
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return request.cookies.get(API_KEY_COOKIE)


def key_ok(studio: Studio, presented: str | None) -> bool:
    expected = studio.settings.api_key
    if expected is None:
        return True
    return presented is not None and secrets.compare_digest(
        presented.encode(), expected.get_secret_value().encode()
    )


async def require_api_key(request: Request, studio: StudioDep) -> None:
    if not key_ok(studio, presented_key(request)):
        raise Unauthorized("a valid API key is required (header X-API-Key or Bearer token)")


class LoginRequired(DomainError):
    """A page was asked for without the API key; the handler redirects to the login page."""

    status_code = 303

    def __init__(self, next_path: str) -> None:
        super().__init__("please log in")
        self.next_path = next_path


async def require_login(request: Request, studio: StudioDep) -> None:
    if not key_ok(studio, presented_key(request)):
        raise LoginRequired(request.url.path)


def load_project(project_id: Id, studio: StudioDep) -> ProjectOut:
    return studio.projects.view(project_id)


def load_generation(generation_id: Id, studio: StudioDep) -> GenerationOut:
    return studio.generations.view(generation_id)


def load_image(image_id: Id, studio: StudioDep) -> ImageOut:
    return studio.gallery.view(image_id)


ProjectDep = Annotated[ProjectOut, Depends(load_project)]
GenerationDep = Annotated[GenerationOut, Depends(load_generation)]
ImageDep = Annotated[ImageOut, Depends(load_image)]
