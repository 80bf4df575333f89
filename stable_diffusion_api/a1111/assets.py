"""AUTOMATIC1111's lists of LoRAs, embeddings and VAE files, and its `sd_vae` option.

The files are the studio's (`studio.assets`: DALI_LORAS_DIR, DALI_EMBEDDINGS_DIR,
DALI_VAE_DIR), listed again on every call, so A1111's refresh endpoints have nothing to do.
Nothing here builds a model:

- a LoRA's `metadata` is its safetensors header's `__metadata__`, read as JSON (values that
  hold a JSON object or list are decoded, as A1111 shows them); other formats get {};
- an embedding is loaded (its vectors only) to tell its shape, and remembered while the file's
  size and modification time stay the same. It is "loaded" when its width is the current
  model's text-encoder width, else "skipped", as A1111 sorts them; an unreadable file is
  skipped too, and its error logged once;
- that width is read from the current checkpoint's safetensors header (the token embedding's
  shape); when it cannot be read cheaply (a .ckpt, no model) it is SD v1.x's, 768.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stable_diffusion_api.a1111.schemas import (
    A1111Request,
    EmbeddingItem,
    EmbeddingsResponse,
    LoraItem,
    SDVaeItem,
)
from stable_diffusion_api.a1111.translate import AUTOMATIC_VAE, SD_VAE_OPTION
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.services.assets import MODEL_OWN_VAE, AssetService
from stable_diffusion_api.services.registry import ModelEntry

log = logging.getLogger(__name__)

SD_V1_TEXT_WIDTH = 768
MAX_HEADER_BYTES = 64 << 20  # a safetensors header larger than this is not read
TOKEN_EMBEDDING = "token_embedding.weight"
T = TypeVar("T")
FileKey = tuple[Path, int, int]  # path, size, modification time (ns)


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a .safetensors file (8-byte length, then JSON); None when `path` is
    not one or cannot be read. Reads the header only, never the tensors."""
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None
    return header if isinstance(header, dict) else None


def _decoded(value: Any) -> Any:
    """A metadata value: JSON objects and lists written as text (kohya's `ss_tag_frequency`,
    …) decoded, everything else as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def safetensors_metadata(path: Path) -> dict[str, Any]:
    header = safetensors_header(path)
    metadata = header.get("__metadata__") if header else None
    if not isinstance(metadata, dict):
        return {}
    return {str(key): _decoded(value) for key, value in metadata.items()}


def text_encoder_width(path: Path) -> int:
    """The width of a checkpoint's token embeddings, from its header; 768 when unknown."""
    header = safetensors_header(path) or {}
    for key, entry in header.items():
        if key.endswith(TOKEN_EMBEDDING) and isinstance(entry, dict):
            shape = entry.get("shape")
            if isinstance(shape, list) and len(shape) == 2 and isinstance(shape[1], int):
                return shape[1]
    return SD_V1_TEXT_WIDTH


def _file_key(path: Path) -> FileKey | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (path, stat.st_size, stat.st_mtime_ns)


class _PerFile:
    """Values computed from files, kept while each file's size and mtime stay the same."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Path, tuple[FileKey, Any]] = {}

    def get(self, path: Path, compute: Callable[[Path], T]) -> T:
        key = _file_key(path)
        with self._lock:
            cached = self._values.get(path)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]  # type: ignore[no-any-return]
        value = compute(path)
        if key is not None:
            with self._lock:
                self._values[path] = (key, value)
        return value


def _embedding_shape(path: Path) -> tuple[int, int] | str:
    """(vectors, width) of an embedding file, or why it cannot be used (logged once)."""
    from sd_core.embeddings import load_embedding

    try:
        embedding = load_embedding(path)
    except (ValueError, OSError) as exc:  # EmbeddingError is a ValueError
        log.warning("embedding %s skipped: %s", path, exc)
        return str(exc)
    return embedding.count, embedding.width


class A1111Assets:
    """The A1111 views of the studio's asset folders, and the `sd_vae` option's values."""

    def __init__(self, assets: AssetService) -> None:
        self.assets = assets
        self._embeddings = _PerFile()
        self._widths = _PerFile()

    def loras(self) -> list[LoraItem]:
        folder = self.assets.folders.loras
        items = []
        for installed in self.assets.loras():
            path = folder / installed.path
            items.append(
                LoraItem(
                    name=installed.name,
                    alias=installed.name,
                    path=str(path),
                    metadata=safetensors_metadata(path),
                )
            )
        return items

    def model_width(self, model: ModelEntry | None) -> int:
        if model is None or not model.available:
            return SD_V1_TEXT_WIDTH
        return self._widths.get(model.path, text_encoder_width)

    def embeddings(self, model: ModelEntry | None) -> EmbeddingsResponse:
        """Each embedding, "loaded" when `model` (the current model) can use it."""
        width = self.model_width(model)
        folder = self.assets.folders.embeddings
        loaded: dict[str, EmbeddingItem] = {}
        skipped: dict[str, EmbeddingItem] = {}
        for installed in self.assets.embeddings():
            shape = self._embeddings.get(folder / installed.path, _embedding_shape)
            if isinstance(shape, str):
                skipped[installed.name] = EmbeddingItem()
                continue
            vectors, own_width = shape
            item = EmbeddingItem(shape=own_width, vectors=vectors)
            (loaded if own_width == width else skipped)[installed.name] = item
        return EmbeddingsResponse(loaded=loaded, skipped=skipped)

    def vaes(self) -> list[SDVaeItem]:
        folder = self.assets.folders.vaes
        return [
            SDVaeItem(model_name=installed.name, filename=str(folder / installed.path))
            for installed in self.assets.vaes()
        ]

    def vae_choice(self, value: Any, field_name: str) -> str | None:
        """An `sd_vae` value in Dali's words: None for "Automatic" (the project's default VAE),
        "None" for the checkpoint's own, else the installed file's exact name. InvalidField
        naming `field_name` (and the files installed) otherwise."""
        if not isinstance(value, str) or not value.strip():
            raise InvalidField(
                field_name,
                value,
                f"a VAE file's name (GET /sdapi/v1/sd-vae), {AUTOMATIC_VAE!r} or {MODEL_OWN_VAE!r}",
            )
        if value.strip().casefold() == AUTOMATIC_VAE.casefold():
            return None
        return self.assets.check_vae(value, field_name) or MODEL_OWN_VAE

    def drop_missing_infotext_vae(
        self, chosen: dict[str, Any], request: A1111Request
    ) -> str | None:
        """An infotext's VAE (`infotext_defaults`' `chosen`) that is not installed here is
        taken out, so the image is made with the project's default VAE as A1111 falls back
        too; the warning that says so. A VAE the request names itself is never dropped."""
        options = chosen.get("override_settings") or {}
        if SD_VAE_OPTION not in options or SD_VAE_OPTION in request.override_settings:
            return None
        name = options[SD_VAE_OPTION]
        try:
            self.vae_choice(name, SD_VAE_OPTION)
        except InvalidField:
            chosen["override_settings"] = {k: v for k, v in options.items() if k != SD_VAE_OPTION}
            return f"the infotext's VAE {name!r} is not installed; the default VAE was used"
        return None
