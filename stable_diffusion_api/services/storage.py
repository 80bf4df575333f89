"""The studio's files — generated PNGs, thumbnails, filmstrips and uploaded inputs — through one
door, `ImageStorage`, whatever holds them (services/object_store.py: the data folder, a shared
`file://` folder, or S3, chosen by DALI_STORAGE_URL).

Layout (keys, stored in the database, relative to the store's root):

    images/<project id>/<generation id>-<index>.png          the image, with its metadata
    images/<project id>/<generation id>-<n>.png              an upscale of one of its images
                                                             (n ≥ the batch size, first free)
    images/<project id>/thumbs/<generation id>-<index>.jpg   a small JPEG for the gallery
    images/<project id>/filmstrips/<generation id>.png       the run's reverse-process strip
    inputs/<generation id>/init.png | mask.png               img2img / inpainting inputs
    quarantine/<key>                                         files no row points at (recovery)

Methods take and give keys, bytes and PIL images, never paths. Every key is built here from
integers the server chose; the store still refuses any key that would leave its root, so no
request can read or delete anything else. A file is written (whole, atomically) before a row
points at it; a row goes before its file is deleted.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import logging
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.object_store import (
    LocalStore,
    ObjectInfo,
    ObjectStore,
    check_storage_url,
)

QUARANTINE = "quarantine"
# What the atomic saves of a LocalStore make (tempfile.mkstemp(prefix=".<name>.", suffix=".tmp"))
PARTIAL_WRITE = re.compile(r"^\.[^/]+\.[A-Za-z0-9_]+\.tmp$")
log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256
MAX_UPLOAD_SIDE = 2048
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
PLAIN_MODES = ("L", "LA", "RGB", "RGBA")  # what decode_image hands out
IMAGE_NAME = re.compile(r"^(\d+)-(\d+)\.(png|jpg)$")
FILMSTRIPS = "filmstrips"
FILMSTRIP_NAME = re.compile(r"^(\d+)\.png$")
# Where `local_file` puts its copies of a remote store's files: the system's temporary folder.
LOCAL_COPIES = Path(tempfile.gettempdir()) / "dali-store-copies"
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}


class ImageStorage:
    """The studio's files in `store` (see the module's layout)."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @classmethod
    def local(cls, data_dir: Path) -> ImageStorage:
        """Files under the data folder, as a single machine keeps them."""
        return cls(LocalStore(data_dir))

    @classmethod
    def open(cls, storage_url: str, data_dir: Path) -> ImageStorage:
        """The store DALI_STORAGE_URL names (the data folder when empty); StorageConfigError
        naming the variable when it cannot be used."""
        return cls(open_store(storage_url, data_dir))

    # -- keys -----------------------------------------------------------------------------

    def image_paths(self, project_id: int, generation_id: int, index: int) -> tuple[str, str]:
        """(png, thumbnail) keys for image `index` of a generation."""
        name = f"{int(generation_id)}-{int(index)}"
        base = f"images/{int(project_id)}"
        return f"{base}/{name}.png", f"{base}/thumbs/{name}.jpg"

    def claim_image_paths(self, project_id: int, generation_id: int, first: int) -> tuple[str, str]:
        """(png, thumbnail) keys for a new image of a generation, numbered `first` or the next
        free number after it. The PNG's key is claimed by creating it empty, exclusively (an
        O_EXCL file, a conditional S3 put), so two writers — threads, processes or hosts —
        never get the same one; the caller writes it over (`save_png`) or deletes it. An empty
        object a crash leaves is one no row points at: recovery quarantines it."""
        number = first
        while True:
            png, thumb = self.image_paths(project_id, generation_id, number)
            if self.store.create(png):
                return png, thumb
            number += 1

    def filmstrip_path(self, project_id: int, generation_id: int) -> str:
        """The key of a generation's filmstrip PNG."""
        return f"images/{int(project_id)}/{FILMSTRIPS}/{int(generation_id)}.png"

    # -- writing --------------------------------------------------------------------------

    def save_png(
        self,
        image: Image.Image,
        relative: str,
        *,
        parameters: Any = None,
        dali: dict[str, Any] | None = None,
        text: dict[str, str] | None = None,
    ) -> None:
        """Write `image` as a PNG with its metadata chunks (sd_core.pngmeta.write_png: the
        `parameters` infotext and `dali` JSON, by default from `image.info`), atomically; on
        the local store it is encoded straight into the temporary file, with no extra copy."""
        from sd_core.pngmeta import write_png

        def fill(handle: IO[bytes]) -> None:
            write_png(image, handle, parameters=parameters, dali=dali, text=text)

        self.store.write(relative, fill)

    def write_filmstrip(self, image: Image.Image, relative: str) -> None:
        self.store.write(relative, lambda handle: image.save(handle, format="PNG"))

    def write_thumbnail(self, image: Image.Image, relative: str) -> None:
        thumb = image.convert("RGB")
        thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self.store.write(relative, lambda handle: thumb.save(handle, format="JPEG", quality=85))

    def save_input(self, generation_id: int, kind: str, image: Image.Image) -> str:
        relative = f"inputs/{int(generation_id)}/{kind}.png"
        self.store.write(relative, lambda handle: image.save(handle, format="PNG"))
        return relative

    # -- reading --------------------------------------------------------------------------

    def read(self, relative: str) -> bytes:
        """The stored bytes; FileNotFoundError when missing, ValueError for a bad key."""
        return self.store.get(relative)

    def open_image(self, relative: str) -> Image.Image:
        """The stored image, fully read (its `format` and PNG text chunks kept);
        FileNotFoundError when missing."""
        image = Image.open(io.BytesIO(self.store.get(relative)))
        image.load()
        return image

    def load_input(self, relative: str) -> Image.Image:
        return self.open_image(relative)

    def open_stream(self, relative: str) -> tuple[ObjectInfo, Iterator[bytes]] | None:
        """The stored object's description and its bytes in pieces, to stream (one request to
        the store); None when it is missing — or when a row edited to point outside the store
        names it (logged, and never served)."""
        try:
            return self.store.open(relative)
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning("a row points outside the data directory: %r", relative)
            return None

    @property
    def local_images(self) -> Path:
        """The folder `local_file`'s files of images/ are in (what the Gradio UI may serve)."""
        root = self.store.root if isinstance(self.store, LocalStore) else self._copies.root
        return root / "images"

    def local_file(self, relative: str) -> Path:
        """The stored file as a local file, for code that wants a path: in a local store the
        file itself (read it, never write it); otherwise an explicit temporary copy under
        LOCAL_COPIES (a folder per store), made once (what a key holds never changes once a row
        points at it). FileNotFoundError when missing."""
        if isinstance(self.store, LocalStore):
            path = self.store.path(relative)
            if not path.is_file():
                raise FileNotFoundError(relative)
            return path
        if self._copies.head(relative) is None:
            self._copies.put(relative, self.store.get(relative))
        return self._copies.path(relative)

    @property
    def _copies(self) -> LocalStore:
        """Where `local_file` copies this store's files: one folder per store URL, so two
        studios on one machine never mix up their `images/1/1-0.png`."""
        digest = hashlib.sha256(self.store.url.encode()).hexdigest()[:16]
        return LocalStore(LOCAL_COPIES / digest)

    def keys(self, folder: str) -> set[str]:
        """The key of every object under `folder` (e.g. "images"), from one listing."""
        return {info.key for info in self.store.list(folder)}

    def exists(self, relative: str) -> bool:
        """Whether the object is there (a key outside the store counts as absent)."""
        try:
            return self.store.head(relative) is not None
        except ValueError:
            return False

    # -- deleting -------------------------------------------------------------------------

    def delete(self, *relatives: str | None) -> None:
        """Delete objects; a key outside the store is skipped, never followed."""
        for relative in relatives:
            if not relative:
                continue
            try:
                self.store.delete(relative)
            except ValueError:
                log.warning("not deleting %r: outside the data directory", relative)

    def delete_inputs(self, generation_id: int) -> None:
        self.store.delete_prefix(f"inputs/{int(generation_id)}")

    def delete_project(self, project_id: int) -> None:
        self.store.delete_prefix(f"images/{int(project_id)}")

    # -- recovery -------------------------------------------------------------------------

    def remove_partial_writes(self, older_than_s: float) -> int:
        """Delete the temporary files a crash left mid-write (`.<name>.<random>.tmp`, made
        only by a LocalStore's atomic writes and sd_core.pngmeta.save_png) that nobody touched
        for `older_than_s` (a live process may be writing a younger one); how many there were.
        An S3 store has none: a put is whole or absent."""
        removed = 0
        cutoff = _now() - dt.timedelta(seconds=older_than_s)
        for folder in ("images", "inputs"):
            for info in self.store.list(folder):
                if PARTIAL_WRITE.match(info.name) and info.modified <= cutoff:
                    self.store.delete(info.key)
                    removed += 1
        return removed

    def quarantine(self, relative: str) -> str:
        """Move an object no row points at to `quarantine/<its key>` (never deleted: a user
        decides); returns its new key."""
        target = f"{QUARANTINE}/{relative}"
        if self.exists(target):  # the same key quarantined before: keep both
            stem, dot, suffix = target.rpartition(".")
            target = (
                f"{stem}-{time.time_ns()}{dot}{suffix}" if dot else f"{target}-{time.time_ns()}"
            )
        self.store.move(relative, target)
        log.warning("moved %s, which no generation points at, to %s", relative, target)
        return target

    def generation_files(self, settled_for_s: float = 0.0) -> dict[int, list[str]]:
        """The key of every image, thumbnail or filmstrip in the store, grouped by the
        generation id in its name — leaving out those written less than `settled_for_s`
        seconds ago (another node may have written the file and not yet its row)."""
        found: dict[int, list[str]] = {}
        cutoff = _now() - dt.timedelta(seconds=settled_for_s)
        for info in self.store.list("images"):
            folder = info.key.rsplit("/", 2)[-2] if info.key.count("/") >= 2 else ""
            pattern = FILMSTRIP_NAME if folder == FILMSTRIPS else IMAGE_NAME
            match = pattern.match(info.name)
            if match and info.modified <= cutoff:
                found.setdefault(int(match.group(1)), []).append(info.key)
        return found


def open_store(url: str, data_dir: Path) -> ObjectStore:
    """The store `url` (DALI_STORAGE_URL, checked by `check_storage_url`) names; the data
    folder's when it is empty."""
    check_storage_url(url)
    if not url:
        return LocalStore(data_dir)
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalStore(Path(unquote(parts.path)))
    from stable_diffusion_api.services.s3_store import S3Store

    return S3Store(parts.netloc, unquote(parts.path).strip("/"))


def content_type(relative: str) -> str:
    """The media type of a stored file, from its key's suffix."""
    return CONTENT_TYPES.get(relative.rsplit(".", 1)[-1].lower(), "application/octet-stream")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
