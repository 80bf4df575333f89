"""The images of a project, or of every project: listing (newest first, optionally only those
whose prompt contains some text), reading, serving and deleting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import ColumnElement, func, select

from sd_core.infotext import parse_infotext
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import InvalidField, NotFound
from stable_diffusion_api.models import Generation, Image, Project
from stable_diffusion_api.schemas import ImageOut
from stable_diffusion_api.services.job_params import params_from_row
from stable_diffusion_api.services.storage import MAX_UPLOAD_SIDE, ImageStorage

# The longest text a gallery search takes (`q`), without the spaces around it.
SEARCH_MAX_CHARS = 200


def image_view(image: Image) -> ImageOut:
    return ImageOut(
        id=image.id,
        generation_id=image.generation_id,
        project_id=image.project_id,
        index=image.index,
        seed=image.seed,
        width=image.width,
        height=image.height,
        parameters=image.parameters,
        created_at=image.created_at,
        url=f"/api/v1/images/{image.id}/file",
        thumbnail_url=f"/api/v1/images/{image.id}/thumbnail",
        source_image_id=image.source_image_id,
        postprocessing=image.postprocessing,
    )


class GalleryService:
    def __init__(self, db: Database, storage: ImageStorage) -> None:
        self._db = db
        self._storage = storage

    def page(
        self, project_id: int, offset: int, limit: int, query: str | None = None
    ) -> tuple[list[ImageOut], int]:
        """One page of the project's images, newest first, and how many there are; with a
        `query`, only those whose prompt contains it (see `everywhere`). NotFound if the
        project is gone."""
        with self._db.session() as session:
            if session.get(Project, project_id) is None:
                raise NotFound("project", project_id)
        return self._page(Image.project_id == project_id, offset, limit, query)

    def everywhere(
        self, offset: int, limit: int, query: str | None = None
    ) -> tuple[list[ImageOut], int]:
        """One page of the images of every project, newest first, and how many there are.

        `query` keeps the images whose generation's prompt contains it, ignoring case (ASCII
        case on SQLite, every letter's on PostgreSQL): `%`, `_` and `/` in it are plain
        characters, not LIKE's wildcards. Empty or blank: no filter; longer than
        SEARCH_MAX_CHARS: InvalidField naming `q`."""
        return self._page(None, offset, limit, query)

    def _page(
        self, where: ColumnElement[bool] | None, offset: int, limit: int, query: str | None
    ) -> tuple[list[ImageOut], int]:
        conditions = [] if where is None else [where]
        query = (query or "").strip()
        if len(query) > SEARCH_MAX_CHARS:
            raise InvalidField("q", query, f"at most {SEARCH_MAX_CHARS} characters", "query")
        if query:
            conditions.append(Generation.prompt.icontains(query, autoescape=True))
        with self._db.session() as session:
            total = session.scalar(
                select(func.count(Image.id))
                .join(Generation, Generation.id == Image.generation_id)
                .where(*conditions)
            )
            images = session.scalars(
                select(Image)
                .join(Generation, Generation.id == Image.generation_id)
                .where(*conditions)
                .order_by(Image.id.desc())
                .offset(offset)
                .limit(limit)
            )
            return [image_view(i) for i in images], total or 0

    def get(self, image_id: int) -> Image:
        with self._db.session() as session:
            image = session.get(Image, image_id)
            if image is None:
                raise NotFound("image", image_id)
            return image

    def view(self, image_id: int) -> ImageOut:
        return image_view(self.get(image_id))

    def with_generation(self, image_id: int) -> tuple[Image, Generation]:
        """The image's row and its generation's. NotFound if the image is gone."""
        with self._db.session() as session:
            image = session.get(Image, image_id)
            if image is None:
                raise NotFound("image", image_id)
            generation = session.get(Generation, image.generation_id)
            assert generation is not None, "an image row always has its generation (foreign key)"
            return image, generation

    def settings_of(self, image_id: int) -> dict[str, Any]:
        """The settings that make this image again on its own ("use these settings"): its
        generation's prompt, sampler, steps, guidance, clip skip, VAE ("None": the checkpoint's
        own) and model with the image's own seed and size — for an upscale, the size its
        infotext says it was made at. NotFound if the image is gone."""
        image, row = self.with_generation(image_id)
        params = params_from_row(row)
        width, height = image.width, image.height
        if image.postprocessing is not None:
            made = parse_infotext(image.parameters)
            if made.width is not None and made.height is not None:
                width, height = made.width, made.height
        return {
            "prompt": row.prompt,
            "negative_prompt": row.negative_prompt,
            "sampler": row.sampler,
            "steps": row.steps,
            "guidance": row.guidance,
            "model": row.model,
            "seed": image.seed,
            "width": width,
            "height": height,
            "clip_skip": params.clip_skip,
            "vae": params.vae or "None",
        }

    def neighbours(self, image: Image) -> tuple[int | None, int | None]:
        """(newer, older) image ids in the same project, for the detail page's arrows."""
        with self._db.session() as session:
            newer = session.scalar(
                select(func.min(Image.id)).where(
                    Image.project_id == image.project_id, Image.id > image.id
                )
            )
            older = session.scalar(
                select(func.max(Image.id)).where(
                    Image.project_id == image.project_id, Image.id < image.id
                )
            )
            return newer, older

    def file(self, image_id: int, thumbnail: bool = False) -> str:
        """The key of the image's stored file (or thumbnail); NotFound if there is no row."""
        image = self.get(image_id)
        return image.thumb_path if thumbnail else image.path

    def read(self, image_id: int) -> bytes:
        """The image's PNG bytes; NotFound if the row or (should never happen) the file is
        gone, or a tampered row points outside the store."""
        try:
            return self._storage.read(self.file(image_id))
        except (FileNotFoundError, ValueError):
            raise NotFound("image file", image_id) from None

    def local_file(self, image_id: int) -> Path:
        """The image's PNG as a local file, for code that wants a path (the Gradio UI): the
        file itself in a local store, a temporary copy otherwise (`ImageStorage.local_file`)."""
        try:
            return self._storage.local_file(self.file(image_id))
        except (FileNotFoundError, ValueError):  # gone, or a tampered row
            raise NotFound("image file", image_id) from None

    def init_image(self, image_id: int, field: str = "init_image_id") -> PILImage.Image:
        """Image `image_id`'s pixels as RGB, for a generation to start from ("send to img2img"):
        read from the file its row names, so no path a request sends reaches the file system.

        InvalidField naming `field` when there is no such image (or its file is gone), or when
        it is larger than an uploaded init image may be (an upscale can be)."""
        try:
            opened = self._storage.open_image(self.file(image_id))
        except (NotFound, FileNotFoundError, ValueError):
            raise InvalidField(field, image_id, "no image with this id in the gallery") from None
        with opened:
            if max(opened.size) > MAX_UPLOAD_SIDE:
                raise InvalidField(
                    field,
                    image_id,
                    f"image {image_id} is {opened.width}×{opened.height}; an init image's sides "
                    f"must be at most {MAX_UPLOAD_SIDE} pixels",
                )
            return opened.convert("RGB")

    def delete(self, image_id: int) -> None:
        with self._db.session() as session:
            image = session.get(Image, image_id)
            if image is None:
                raise NotFound("image", image_id)
            paths = (image.path, image.thumb_path)
            session.delete(image)
        # The row goes first: a row never points at a deleted file, at worst a file is orphaned.
        self._storage.delete(*paths)
