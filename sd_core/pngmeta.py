"""PNG files that carry their generation parameters.

Two text chunks, as docs/architecture.md ("Contracts") fixes them:

- `parameters`: AUTOMATIC1111's infotext (see `sd_core.infotext`), so A1111's "PNG Info" tab,
  and every tool that reads A1111 images, shows how the image was made. Like A1111 (PIL's
  `PngInfo.add_text`), it is a tEXt chunk when the text is latin-1 and an iTXt chunk (UTF-8)
  otherwise, e.g. for a prompt in Japanese or with an emoji.
- `dali`: the same as JSON, plus what only Dali knows (device, dtype, project, sampler name).
  Written with ASCII escapes, so it is always a plain tEXt chunk.

`save_png` also writes any further text chunks it is given, such as the `postprocessing` and
`extras` chunks A1111 adds to an upscaled image (tEXt or iTXt, as `parameters`).

Files are written atomically: into a temporary file in the target's folder, then renamed over
the target, so a reader (the gallery, a browser) never sees half an image.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from PIL import Image, PngImagePlugin

from sd_core.infotext import GenerationParameters, format_infotext, parse_infotext

PARAMETERS_CHUNK = "parameters"
DALI_CHUNK = "dali"

# Written files get the usual mode of a file made by a program, not mkstemp's owner-only 0o600,
# so that a web server or another user can serve the image.
_FILE_MODE = 0o644


def png_text_chunks(image: Image.Image) -> dict[str, str]:
    """The text chunks (tEXt, zTXt and iTXt) of a PNG opened with `PIL.Image.open`.

    Unlike `image.info`, this includes chunks stored after the image data. Raises ValueError for
    an image that is not a PNG read from a file (a converted copy has lost its chunks).
    """
    if not isinstance(image, PngImagePlugin.PngImageFile):
        raise ValueError(
            f"image must be a PNG opened with PIL.Image.open, got a {type(image).__name__} "
            f"of format {image.format!r}"
        )
    # iTXt values come as a str subclass that also carries language tags: hand out plain str.
    return {str(key): str(value) for key, value in image.text.items()}


def _parameters_text(parameters: str | GenerationParameters | None) -> str | None:
    if parameters is None or isinstance(parameters, str):
        return parameters
    if isinstance(parameters, GenerationParameters):
        return format_infotext(parameters)
    raise ValueError(
        f"parameters must be an infotext str or GenerationParameters, got {type(parameters).__name__}"
    )


def _dali_text(dali: dict[str, Any] | str | None) -> str | None:
    if dali is None:
        return None
    if isinstance(dali, str):
        # A `dali` chunk read back from a PNG (image.info["dali"]): check it, then write it anew.
        try:
            dali = json.loads(dali)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"dali must be a JSON object, got text that is not JSON: {error}"
            ) from error
    if not isinstance(dali, dict):
        raise ValueError(f"dali must be a dict (a JSON object), got {type(dali).__name__}")
    try:
        # ASCII escapes keep the chunk latin-1, i.e. tEXt; allow_nan=False because NaN is not JSON.
        return json.dumps(dali, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"dali must hold only JSON values: {error}") from error


def png_chunks(
    image: Image.Image,
    *,
    parameters: str | GenerationParameters | None = None,
    dali: dict[str, Any] | None = None,
    text: Mapping[str, str] | None = None,
) -> PngImagePlugin.PngInfo:
    """The text chunks `save_png` writes: `parameters` (default `image.info["parameters"]`),
    `dali` (default `image.info["dali"]`), then `text`'s; a chunk with no value is left out.
    ValueError when `text` names one of the first two, or `dali` is not a JSON object."""
    parameters_text = _parameters_text(
        parameters if parameters is not None else image.info.get(PARAMETERS_CHUNK)
    )
    dali_text = _dali_text(dali if dali is not None else image.info.get(DALI_CHUNK))
    further = dict(text or {})
    for name in (PARAMETERS_CHUNK, DALI_CHUNK):
        if name in further:
            raise ValueError(f"text must not hold the {name!r} chunk: pass it as {name}=")

    chunks = PngImagePlugin.PngInfo()
    if parameters_text is not None:
        chunks.add_text(PARAMETERS_CHUNK, parameters_text)  # tEXt, or iTXt when not latin-1
    if dali_text is not None:
        chunks.add_text(DALI_CHUNK, dali_text)
    for name, value in further.items():
        chunks.add_text(name, value)
    return chunks


def write_png(
    image: Image.Image,
    file: IO[bytes],
    *,
    parameters: str | GenerationParameters | None = None,
    dali: dict[str, Any] | None = None,
    text: Mapping[str, str] | None = None,
) -> None:
    """Encode `image` as a PNG with its chunks (`png_chunks`) into the binary `file`; for
    writers that own the file (an object store), where `save_png` owns a path."""
    chunks = png_chunks(image, parameters=parameters, dali=dali, text=text)
    image.save(file, format="PNG", pnginfo=chunks)


def save_png(
    image: Image.Image,
    path: str | os.PathLike[str],
    *,
    parameters: str | GenerationParameters | None = None,
    dali: dict[str, Any] | None = None,
    text: Mapping[str, str] | None = None,
) -> Path:
    """Write `image` as a PNG at `path` with its `parameters` and `dali` chunks; return the path.

    `parameters` (an infotext, or GenerationParameters to format as one) defaults to
    `image.info["parameters"]`, `dali` to `image.info["dali"]`; a chunk with neither is left out.
    `text` holds further chunks by name (written after those two); it may not name either.
    Parent folders are created. The write is atomic: a temporary file in the same folder is
    renamed over `path` only once it is complete, and removed if anything fails, so `path` holds
    either its old content or the whole new image. Raises ValueError when `path` does not end in
    ".png" or `dali` is not a JSON object.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {str(path)!r}")
    chunks = png_chunks(image, parameters=parameters, dali=dali, text=text)

    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file must be in the target's folder: os.replace is atomic only within one
    # file system. The leading dot keeps it out of a gallery's listing of *.png.
    handle, temporary_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as file:
            image.save(file, format="PNG", pnginfo=chunks)
            file.flush()
            os.fsync(file.fileno())  # the data is on disk before the name points at it
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _read_dali(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None  # a damaged or foreign `dali` chunk: the infotext still tells the story
    return value if isinstance(value, dict) else None


def read_png_metadata(
    source: str | os.PathLike[str] | bytes | IO[bytes],
) -> tuple[GenerationParameters | None, dict[str, Any] | None]:
    """Read the parameters of a PNG: a path, the file's bytes, or a binary file object.

    Returns (the parsed `parameters` infotext, the `dali` JSON object); each is None when its
    chunk is missing, and the second also when the chunk is not a JSON object. Raises ValueError
    for an image that is not a PNG, PIL.UnidentifiedImageError for data that is no image.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        if image.format != "PNG":
            raise ValueError(f"expected a PNG image, got format {image.format!r}")
        chunks = png_text_chunks(image)
    infotext = chunks.get(PARAMETERS_CHUNK)
    parameters = parse_infotext(infotext) if infotext is not None else None
    return parameters, _read_dali(chunks.get(DALI_CHUNK))
