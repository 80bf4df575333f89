"""Files users bring (LoRAs, embeddings, VAEs): found by name in one folder, loaded once.

A `FileLibrary` looks for files with its suffixes anywhere under its folder and names each one
the way AUTOMATIC1111 does for that kind (`name_of`: the stem for LoRAs and embeddings, the
whole file name for VAEs). A name from a request is only ever looked up among the files found,
never joined to a path, so it cannot reach outside the folder. The folder is listed again on
every lookup (a few milliseconds for thousands of files), so a file dropped in is usable at
once; a loaded file is kept until its size or modification time changes or `refresh()` runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")


def stem_name(path: Path) -> str:
    """`add_detail.safetensors` → `add_detail` (LoRAs, embeddings)."""
    return path.stem


def file_name(path: Path) -> str:
    """`vae-ft-mse.vae.safetensors` → itself (VAEs, as A1111's `sd_vae` names them)."""
    return path.name


@dataclass(frozen=True)
class LibraryFile:
    """One file found: its name, path, size in bytes and modification time (ns)."""

    name: str
    path: Path
    size: int
    mtime_ns: int


class FileLibrary(Generic[T]):
    """The files of one kind under `directory`, by name, each loaded by `load` on first use."""

    def __init__(
        self,
        directory: Path,
        suffixes: tuple[str, ...],
        load: Callable[[Path], T],
        name_of: Callable[[Path], str] = stem_name,
    ) -> None:
        self.directory = Path(directory)
        self.suffixes = tuple(s.lower() for s in suffixes)
        self._load = load
        self._name_of = name_of
        self._lock = threading.Lock()
        self._loaded: dict[Path, tuple[LibraryFile, T]] = {}

    def files(self) -> list[LibraryFile]:
        """Every file found, sorted by name; of two files with one name the first path wins."""
        if not self.directory.is_dir():
            return []
        found: dict[str, LibraryFile] = {}
        for path in sorted(self.directory.rglob("*")):
            if path.suffix.lower() not in self.suffixes or not path.is_file():
                continue
            stat = path.stat()
            name = self._name_of(path)
            found.setdefault(name, LibraryFile(name, path, stat.st_size, stat.st_mtime_ns))
        return sorted(found.values(), key=lambda f: f.name.lower())

    def names(self) -> list[str]:
        return [f.name for f in self.files()]

    def find(self, name: str) -> LibraryFile | None:
        """The file called `name` (exact match first, then ignoring case), or None."""
        files = self.files()
        exact = next((f for f in files if f.name == name), None)
        return exact or next((f for f in files if f.name.lower() == name.lower()), None)

    def get(self, name: str) -> T | None:
        """The loaded file called `name`, or None when there is none; the loader's errors
        (a corrupt or refused file) propagate."""
        entry = self.find(name)
        if entry is None:
            return None
        return self.load(entry)

    def load(self, entry: LibraryFile) -> T:
        with self._lock:
            cached = self._loaded.get(entry.path)
            if cached is not None and cached[0] == entry:
                return cached[1]
        value = self._load(entry.path)
        with self._lock:
            self._loaded[entry.path] = (entry, value)
        return value

    def refresh(self) -> None:
        """Forget every loaded file (the next lookup reads the folder and files again)."""
        with self._lock:
            self._loaded.clear()
