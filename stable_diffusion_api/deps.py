"""Dependencies for the routes: the studio, the authenticator, and "load or 404" — each once.

Routes declare what they need with these `Annotated` aliases, e.g.
`def read(project: ProjectDep) -> ProjectOut`; the studio comes from `app.state`, put there by
`create_app()`, so tests build an app with their own settings and fake generator.

Authentication is not a dependency: `auth.AuthGuard`, in front of the whole app, has checked
every request before any route runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from stable_diffusion_api.auth import Authenticator
from stable_diffusion_api.schemas import GenerationOut, ImageOut, ProjectOut
from stable_diffusion_api.services import Studio

# Ids are 64-bit in the database; a larger number must be a 422, never an overflow.
Id = Annotated[int, Path(ge=1, le=2**62)]
# `?q=`: text to look for in the prompts of a gallery's images (the pages and the API alike;
# the gallery service checks its length, so a page can show the error beside its search box).
SearchText = Annotated[
    str | None,
    Query(description="Only the images whose prompt contains this text (ignoring case)."),
]


# Cheap dependencies are `async def`: a plain `def` would cost a thread-pool round trip each
# (and a GIL hand-off that waits on the worker thread while it samples).
async def get_studio(request: Request) -> Studio:
    studio: Studio = request.app.state.studio
    return studio


StudioDep = Annotated[Studio, Depends(get_studio)]


async def get_auth(request: Request) -> Authenticator:
    """The app's one `Authenticator` (the guard in front of every route uses the same)."""
    auth: Authenticator = request.app.state.auth
    return auth


AuthDep = Annotated[Authenticator, Depends(get_auth)]


def load_project(project_id: Id, studio: StudioDep) -> ProjectOut:
    return studio.projects.view(project_id)


def load_generation(generation_id: Id, studio: StudioDep) -> GenerationOut:
    return studio.generations.view(generation_id)


def load_image(image_id: Id, studio: StudioDep) -> ImageOut:
    return studio.gallery.view(image_id)


ProjectDep = Annotated[ProjectOut, Depends(load_project)]
GenerationDep = Annotated[GenerationOut, Depends(load_generation)]
ImageDep = Annotated[ImageOut, Depends(load_image)]
