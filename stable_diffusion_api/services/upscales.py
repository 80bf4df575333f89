"""`UpscaleService`: upscale an image of the gallery and keep the result in the gallery.

The upscalers are `sd_core.upscalers`': Lanczos, Nearest and the model files (ESRGAN,
Real-ESRGAN, SwinIR, … through spandrel) in `<data>/upscalers/` — every name A1111's
`/sdapi/v1/upscalers` lists except "None", which would not upscale. The factor is more than 1 and
at most `MAX_SCALE` (8), and neither side of the result may pass `MAX_SIDE` (8192 pixels): the
engine's limits, also those of A1111's extras.

The result is a new image of the source's generation (same project, seed and batch index),
pointing at its source (`source_image_id`). Its PNG keeps the source's `parameters` infotext
and `dali` JSON (that gains a `postprocessing` entry) and adds AUTOMATIC1111's `postprocessing`
and `extras` chunks, "Postprocess upscale by: 2, Postprocess upscaler: Lanczos", as A1111's
extras tab saves an upscale; the row keeps that text in `postprocessing`. The file is claimed
under a free name (`ImageStorage.claim_image_paths`), written as a generated image is (whole or
not at all: `ImageStorage.save_png`), and the row is inserted only once the PNG and
its thumbnail exist; when anything fails the files go again.

Where it runs: in the caller's thread — the REST and page routes are plain `def`, so FastAPI's
thread pool, never the event loop — one upscale at a time in this process (`_lock`: a model
pass over a large image takes much memory). Not through the job queue: its rows are
generations (parameters, a device, a sampler's progress), which an upscale has none of, and
Lanczos or Nearest take a few seconds at most (2048² to 8192², PNG included: about 6 s on a
busy 2-core machine; 512² to 1024² well under one). A model upscale runs on the
CPU in this process, as A1111's extras do here (`a1111/extras.py`); moving those to the device's
worker is left to do.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy.exc import IntegrityError

from sd_core.infotext import format_pairs
from sd_core.pngmeta import DALI_CHUNK, png_text_chunks
from sd_core.upscalers import MAX_SCALE, NONE, UpscalerError, target_size, upscaler_names
from sd_core.upscalers import upscale_image as run_upscaler
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import InvalidField, NotFound
from stable_diffusion_api.models import Image
from stable_diffusion_api.schemas import ImageOut
from stable_diffusion_api.services.gallery import GalleryService, image_view
from stable_diffusion_api.services.storage import ImageStorage


def postprocessing_text(upscaler: str, scale: float) -> str:
    """A1111's postprocessing infotext of an upscale by `scale` with `upscaler`."""
    return format_pairs({"Postprocess upscale by": f"{scale:g}", "Postprocess upscaler": upscaler})


class UpscaleService:
    def __init__(
        self, db: Database, storage: ImageStorage, gallery: GalleryService, folder: Path | None
    ) -> None:
        """`folder`: where the model files are (`<data>/upscalers/`); None → built-ins only."""
        self._db = db
        self._storage = storage
        self._gallery = gallery
        self._folder = folder
        self._lock = threading.Lock()

    def upscalers(self) -> list[str]:
        """The names an upscale may use: Lanczos, Nearest, then the model files."""
        return [name for name in upscaler_names(self._folder) if name != NONE]

    def check_upscaler(self, name: str) -> str:
        """The upscaler's own name for `name` (exact, else ignoring case); InvalidField naming
        `upscaler` and the names there are otherwise."""
        names = self.upscalers()
        found = next((n for n in names if n == name), None) or next(
            (n for n in names if n.lower() == name.lower()), None
        )
        if found is None:
            raise InvalidField("upscaler", name, f"upscalers installed: {', '.join(names)}")
        return found

    def upscale(self, image_id: int, upscaler: str, scale: float) -> ImageOut:
        """Upscale image `image_id` by `scale` with `upscaler` into a new gallery image.

        NotFound when the image is gone (also when it is deleted meanwhile); InvalidField naming
        `upscaler` (not installed, or a model file that cannot be used) or `scale` (not more
        than 1, above `MAX_SCALE`, a result wider or taller than `MAX_SIDE`, or one no larger
        than the image)."""
        source, first_number = self._source(image_id)
        name = self.check_upscaler(upscaler)
        size = self._target_size(source, scale)
        picture, chunks = self._read(source)
        with self._lock:
            try:
                result = run_upscaler(picture, name, scale, self._folder, size=size)
            except ValueError as e:  # UpscalerError, CheckpointError: a file it cannot use
                raise InvalidField("upscaler", name, str(e)) from None
        info = postprocessing_text(name, scale)
        dali = self._dali(chunks.get(DALI_CHUNK), source, name, scale, result.size)
        png, thumb = self._storage.claim_image_paths(
            source.project_id, source.generation_id, first_number
        )
        written = [png]
        try:
            self._storage.save_png(
                result,
                png,
                parameters=source.parameters,
                dali=dali,
                text={"postprocessing": info, "extras": info},
            )
            written.append(thumb)
            self._storage.write_thumbnail(result, thumb)
            return self._insert(source, png, thumb, result.size, info)
        except BaseException:
            self._storage.delete(*written)
            raise

    # -- steps ----------------------------------------------------------------------------------

    def _source(self, image_id: int) -> tuple[Image, int]:
        """The image's row, and the first file number an upscale of it may take: the one after
        its generation's own images."""
        image, generation = self._gallery.with_generation(image_id)
        return image, generation.batch

    @staticmethod
    def _target_size(source: Image, scale: float) -> tuple[int, int]:
        if not (math.isfinite(scale) and scale > 1):
            raise InvalidField("scale", scale, f"more than 1, at most {MAX_SCALE:g}")
        try:
            width, height = target_size((source.width, source.height), scale)
        except UpscalerError as e:
            raise InvalidField("scale", scale, str(e)) from None
        if (width, height) == (source.width, source.height):
            raise InvalidField(
                "scale",
                scale,
                f"it leaves the {width}×{height} image as large as it is; choose a larger scale",
            )
        return width, height

    def _read(self, source: Image) -> tuple[PILImage.Image, dict[str, str]]:
        """The source's pixels and its PNG's text chunks."""
        try:
            opened = self._storage.open_image(source.path)
        except (FileNotFoundError, ValueError):  # the row is there, its file is not (recovery
            raise NotFound("image file", source.id) from None  # will drop the row)
        chunks = png_text_chunks(opened) if opened.format == "PNG" else {}
        return opened, chunks

    @staticmethod
    def _dali(
        text: str | None, source: Image, upscaler: str, scale: float, size: tuple[int, int]
    ) -> dict[str, Any]:
        """The source's `dali` JSON and what was done to it (its width and height stay those
        the generation made)."""
        try:
            dali = json.loads(text) if text else {}
        except json.JSONDecodeError:
            dali = {}
        if not isinstance(dali, dict):
            dali = {}
        dali["postprocessing"] = {
            "source_image_id": source.id,
            "upscaler": upscaler,
            "upscale_by": scale,
            "width": size[0],
            "height": size[1],
        }
        return dali

    def _insert(
        self, source: Image, png: str, thumb: str, size: tuple[int, int], info: str
    ) -> ImageOut:
        """The new row, in the source's generation and project; NotFound when the source (or
        its generation, its project) was deleted meanwhile — the foreign keys refuse the row."""
        try:
            with self._db.session() as session:
                row = Image(
                    generation_id=source.generation_id,
                    project_id=source.project_id,
                    index=source.index,
                    seed=source.seed,
                    path=png,
                    thumb_path=thumb,
                    width=size[0],
                    height=size[1],
                    parameters=source.parameters,
                    source_image_id=source.id,
                    postprocessing=info,
                )
                session.add(row)
                session.flush()
                return image_view(row)
        except IntegrityError:
            raise NotFound("image", source.id) from None
