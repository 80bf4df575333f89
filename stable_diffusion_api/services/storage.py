"""Image files under the data directory: generated PNGs, thumbnails and uploaded inputs.

Layout (all paths stored in the database are relative to the data directory):

    images/<project id>/<generation id>-<index>.png          the image, with its metadata
    images/<project id>/<generation id>-<n>.png              an upscale of one of its images
                                                             (n ≥ the batch size, first free)
    images/<project id>/thumbs/<generation id>-<index>.jpg   a small JPEG for the gallery
    images/<project id>/filmstrips/<generation id>.png       the run's reverse-process strip
    inputs/<generation id>/init.png | mask.png               img2img / inpainting inputs

Every path is built here from integers the server chose; `resolve` still refuses any path that
would land outside the data directory, so no request can read or delete anything else.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from stable_diffusion_api.errors import InvalidField

QUARANTINE = "quarantine"
FILE_MODE = 0o644
# What tempfile.mkstemp(prefix=".<name>.", suffix=".tmp") makes for an atomic save.
PARTIAL_WRITE = re.compile(r"^\.[^/]+\.[A-Za-z0-9_]+\.tmp$")
log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256
MAX_UPLOAD_SIDE = 2048
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
PLAIN_MODES = ("L", "LA", "RGB", "RGBA")  # what decode_image hands out
IMAGE_NAME = re.compile(r"^(\d+)-(\d+)\.(png|jpg)$")
FILMSTRIPS = "filmstrips"
FILMSTRIP_NAME = re.compile(r"^(\d+)\.png$")


class ImageStorage:
    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir.resolve()

    def resolve(self, relative: str) -> Path:
        """The absolute path for a stored relative path; ValueError if it leaves the data dir."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"path {relative!r} is outside the data directory")
        return path

    def image_paths(self, project_id: int, generation_id: int, index: int) -> tuple[str, str]:
        """(png, thumbnail) relative paths for image `index` of a generation."""
        name = f"{int(generation_id)}-{int(index)}"
        base = f"images/{int(project_id)}"
        return f"{base}/{name}.png", f"{base}/thumbs/{name}.jpg"

    def claim_image_paths(self, project_id: int, generation_id: int, first: int) -> tuple[str, str]:
        """(png, thumbnail) relative paths for a new image of a generation, numbered `first` or
        the next free number after it. The PNG's name is claimed by creating it empty and
        exclusively (O_EXCL), so two writers — threads or processes — never get the same name;
        the caller writes it over (`sd_core.pngmeta.save_png`) or deletes it. An empty file a
        crash leaves is one no row points at: recovery quarantines it."""
        number = first
        while True:
            png, thumb = self.image_paths(project_id, generation_id, number)
            path = self.resolve(png)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            except FileExistsError:
                number += 1
                continue
            return png, thumb

    def filmstrip_path(self, project_id: int, generation_id: int) -> str:
        """The relative path of a generation's filmstrip PNG."""
        return f"images/{int(project_id)}/{FILMSTRIPS}/{int(generation_id)}.png"

    def write_filmstrip(self, image: Image.Image, relative: str) -> None:
        self._atomic_save(image, self.resolve(relative), "PNG")

    def write_thumbnail(self, image: Image.Image, relative: str) -> None:
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self._atomic_save(thumb, self.resolve(relative), "JPEG", quality=85)

    def save_input(self, generation_id: int, kind: str, image: Image.Image) -> str:
        relative = f"inputs/{int(generation_id)}/{kind}.png"
        self._atomic_save(image, self.resolve(relative), "PNG")
        return relative

    def load_input(self, relative: str) -> Image.Image:
        with Image.open(self.resolve(relative)) as image:
            image.load()
            return image.copy()

    def delete(self, *relatives: str | None) -> None:
        """Delete files; a path outside the data directory is skipped, never followed."""
        for relative in relatives:
            if not relative:
                continue
            try:
                path = self.resolve(relative)
            except ValueError:
                log.warning("not deleting %r: outside the data directory", relative)
                continue
            path.unlink(missing_ok=True)

    def delete_inputs(self, generation_id: int) -> None:
        shutil.rmtree(self.resolve(f"inputs/{int(generation_id)}"), ignore_errors=True)

    def delete_project(self, project_id: int) -> None:
        shutil.rmtree(self.resolve(f"images/{int(project_id)}"), ignore_errors=True)

    def file_to_serve(self, relative: str) -> Path | None:
        """The stored file's absolute path, or None when it is missing — or when a row edited to
        point outside the data directory names it (logged, and never served)."""
        try:
            path = self.resolve(relative)
        except ValueError:
            log.warning("a row points outside the data directory: %r", relative)
            return None
        return path if path.is_file() else None

    def exists(self, relative: str) -> bool:
        """Whether the file is there (a path outside the data directory counts as absent)."""
        try:
            return self.resolve(relative).is_file()
        except ValueError:
            return False

    def remove_partial_writes(self, older_than_s: float) -> int:
        """Delete the temporary files a crash left mid-write (`.<name>.<random>.tmp`, made
        only by the atomic saves here and in sd_core.pngmeta) that nobody touched for
        `older_than_s` (a live process may be writing a younger one); how many there were."""
        removed = 0
        cutoff = time.time() - older_than_s
        for folder in ("images", "inputs"):
            root = self.root / folder
            if root.is_dir():
                for path in root.rglob(".*.tmp"):
                    fresh = path.stat().st_mtime > cutoff
                    if path.is_file() and PARTIAL_WRITE.match(path.name) and not fresh:
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed

    def quarantine(self, path: Path) -> Path:
        """Move a file no row points at to `quarantine/<its relative path>` in the data
        directory (never deleted: a user decides); returns where it went."""
        relative = path.relative_to(self.root)
        target = self.root / QUARANTINE / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():  # the same name quarantined before: keep both
            target = target.with_name(f"{target.stem}-{time.time_ns()}{target.suffix}")
        os.replace(path, target)
        log.warning("moved %s, which no generation points at, to %s", relative, target)
        return target

    def generation_files(self) -> dict[int, list[Path]]:
        """Every image, thumbnail or filmstrip file on disk, grouped by the generation id in
        its name."""
        found: dict[int, list[Path]] = {}
        images = self.root / "images"
        if not images.is_dir():
            return found
        for path in images.rglob("*"):
            pattern = FILMSTRIP_NAME if path.parent.name == FILMSTRIPS else IMAGE_NAME
            match = pattern.match(path.name)
            if match and path.is_file():
                found.setdefault(int(match.group(1)), []).append(path)
        return found

    def _atomic_save(self, image: Image.Image, path: Path, fmt: str, **options: int) -> None:
        # A reader (or a crash) never sees a half-written file: write beside it, synced, then
        # rename; readable like the generated PNGs (sd_core.pngmeta.save_png does the same).
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                image.save(handle, format=fmt, **options)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, FILE_MODE)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def decode_image(data: str, field: str) -> Image.Image:
    """A base64 image (optionally a `data:` URL) from a request, checked and fully decoded.

    Raises InvalidField naming `field` for anything that is not a readable PNG/JPEG/WebP/BMP of
    at most 2048×2048 pixels; the size is checked before decoding the pixels. The image comes
    back in one of PLAIN_MODES (`plain_mode`), so a CMYK JPEG or a 16-bit PNG is no surprise to
    the code after, nor to saving it as PNG.
    """
    payload = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField(field, "<data>", "send the image as base64 (or a data: URL)") from None
    try:
        image = Image.open(io.BytesIO(raw))
        if image.format not in UPLOAD_FORMATS:
            raise InvalidField(field, image.format, f"allowed formats: {', '.join(UPLOAD_FORMATS)}")
        if max(image.size) > MAX_UPLOAD_SIDE or min(image.size) < 8:
            raise InvalidField(
                field, f"{image.width}x{image.height}", f"sides must be 8–{MAX_UPLOAD_SIDE} pixels"
            )
        image.load()
        plain = plain_mode(image)
    except Image.DecompressionBombError:  # sides far beyond the limit, read from the header
        raise InvalidField(
            field, "<data>", f"sides must be 8–{MAX_UPLOAD_SIDE} pixels (an image bomb?)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidField(field, "<data>", "not a readable PNG, JPEG, WebP or BMP image") from None
    return plain


def plain_mode(image: Image.Image) -> Image.Image:
    """`image` as greyscale or RGB, each with or without alpha (PLAIN_MODES).

    16-bit greyscale is scaled to 8 bits (PIL's own conversion clips at 255: a mid-grey mask
    would paint everything); 1-bit becomes greyscale; a palette becomes RGB (RGBA where it has
    transparency); CMYK and the other colour spaces become RGB.
    """
    if image.mode in PLAIN_MODES:
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        levels = np.asarray(image, dtype=np.float64) / 257.0  # 65535 → 255
        return Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), "L")
    if image.mode in ("1", "La"):
        return image.convert("LA" if image.mode == "La" else "L")
    alpha = image.mode in ("PA", "RGBa") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if alpha else "RGB")
