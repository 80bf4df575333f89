"""`AssetService`: the LoRAs, embeddings and VAE files installed, for pickers and list APIs.

Listing reads the folders only (no model, no torch); the engine loads the files when a prompt
or request names them. A VAE named in a request is checked here, before the job is queued, so
a typo answers 422 naming `vae` and the files there are, instead of failing in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sd_core.assets import EMBEDDING_SUFFIXES, LORA_SUFFIXES, VAE_SUFFIXES, AssetFolders
from sd_core.file_library import FileLibrary, LibraryFile, file_name
from stable_diffusion_api.errors import InvalidField

# What a request may send for "the checkpoint's own VAE" (A1111's option value "None").
MODEL_OWN_VAE = "None"


@dataclass(frozen=True)
class InstalledFile:
    """One installed file: its name (what prompts and requests use), its path relative to its
    folder, its size in bytes."""

    name: str
    path: str
    size: int


def _unloaded(path: Path) -> Any:
    raise AssertionError("listing never loads a file")


class AssetService:
    def __init__(self, folders: AssetFolders) -> None:
        self.folders = folders
        self._loras: FileLibrary[Any] = FileLibrary(folders.loras, LORA_SUFFIXES, _unloaded)
        self._embeddings: FileLibrary[Any] = FileLibrary(
            folders.embeddings, EMBEDDING_SUFFIXES, _unloaded
        )
        self._vaes: FileLibrary[Any] = FileLibrary(
            folders.vaes, VAE_SUFFIXES, _unloaded, name_of=file_name
        )

    @staticmethod
    def _installed(library: FileLibrary[Any]) -> list[InstalledFile]:
        def relative(entry: LibraryFile) -> str:
            return entry.path.relative_to(library.directory).as_posix()

        return [InstalledFile(f.name, relative(f), f.size) for f in library.files()]

    def loras(self) -> list[InstalledFile]:
        return self._installed(self._loras)

    def embeddings(self) -> list[InstalledFile]:
        return self._installed(self._embeddings)

    def vaes(self) -> list[InstalledFile]:
        return self._installed(self._vaes)

    def embedding_path(self, name: str) -> Path | None:
        entry = self._embeddings.find(name)
        return None if entry is None else entry.path

    def check_vae(self, name: str | None, field: str = "vae") -> str | None:
        """The installed VAE's exact name for `name` (None and "None" → None, the checkpoint's
        own); InvalidField naming `field` and the installed files when there is no such file."""
        if name is None or name.strip().lower() == MODEL_OWN_VAE.lower():
            return None
        entry = self._vaes.find(name.strip())
        if entry is None:
            installed = ", ".join(self._vaes.names()) or f"none in {self.folders.vaes}"
            raise InvalidField(
                field,
                name,
                f"no VAE file named {name!r} is installed; installed: {installed} "
                f"(or {MODEL_OWN_VAE!r} for the model's own)",
            )
        return entry.name
