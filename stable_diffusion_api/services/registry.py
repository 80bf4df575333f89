"""The model registry: the built-in model plus every checkpoint in the models directory.

Hashing a checkpoint (sha256 of up to 4 GB) is done once per file and kept in the `model_files`
table, valid while the file's size and modification time stay the same. A file the engine cannot
read is listed with its error instead of breaking the listing. Clients name a model by its name
(the file stem), its file name, its A1111 title "name [short hash]", or either hash.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from stable_diffusion_api.config import Settings
from stable_diffusion_api.db import Database
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.models import ModelFile, utcnow
from stable_diffusion_api.services.generator import Generator, ModelSpec

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
BUILTIN_LABEL = "built-in: shapes only"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    filename: str
    builtin: bool
    available: bool
    size_bytes: int | None = None
    variant: str | None = None
    dtype: str | None = None
    sha256: str | None = None
    short_hash: str | None = None
    parameters: dict[str, int] = dataclasses.field(default_factory=dict)
    native_size: int | None = None
    error: str | None = None

    def on(self, device: str, dtype: str | None, low_memory: bool = False) -> ModelSpec:
        """This model's weights on `device` in `dtype`: what the engine loads."""
        return ModelSpec(self.path, self.name, device, dtype, low_memory, self.parameter_count)

    @property
    def label(self) -> str:
        if self.builtin:
            return f"{self.name} ({BUILTIN_LABEL})"
        if self.error:
            return f"{self.name} (unusable)"
        return f"{self.name} ({self.variant})" if self.variant else self.name

    @property
    def title(self) -> str:
        """AUTOMATIC1111's model title: "name [short hash]"."""
        return f"{self.filename} [{self.short_hash}]" if self.short_hash else self.filename

    @property
    def parameter_count(self) -> int | None:
        return sum(self.parameters.values()) if self.parameters else None


class ModelRegistry:
    def __init__(self, settings: Settings, db: Database, generator: Generator) -> None:
        self._models_dir = settings.resolved_models_dir
        self._locks_dir = settings.resolved_data_dir / "locks"
        self._db = db
        self._generator = generator
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[int, int, ModelEntry]] = {}

    def _files(self) -> list[tuple[Path, bool]]:
        builtin = self._generator.builtin_checkpoint().absolute()
        files: list[tuple[Path, bool]] = [(builtin, True)]
        if self._models_dir.is_dir():
            for path in sorted(self._models_dir.rglob("*")):
                relative = path.relative_to(self._models_dir)
                hidden = any(part.startswith(".") for part in relative.parts)
                wanted = path.suffix.lower() in CHECKPOINT_SUFFIXES and not hidden
                # A symlinked checkpoint keeps its link's name; the same file as the built-in
                # model is listed once, as the built-in.
                if wanted and path.is_file() and path.resolve() != builtin.resolve():
                    files.append((path.absolute(), False))
        return files

    def list(self) -> list[ModelEntry]:
        """Every model, the built-in first; new or changed files are inspected (slow once)."""
        with self._lock:
            files = self._files()
            stems = [path.stem for path, _ in files]
            entries = []
            for path, builtin in files:
                name = path.stem
                if stems.count(name) > 1 and not builtin:
                    name = self._filename(path)  # two files share a stem: keep names unique
                entries.append(self._entry(path, name, builtin))
            return entries

    def _filename(self, path: Path) -> str:
        if path.is_relative_to(self._models_dir):
            return path.relative_to(self._models_dir).as_posix()
        return path.name

    def _entry(self, path: Path, name: str, builtin: bool) -> ModelEntry:
        filename = self._filename(path)
        try:
            stat = path.stat()
        except OSError:
            missing = "the file is missing" + (
                " (the built-in model has not been trained yet)" if builtin else ""
            )
            return ModelEntry(name, path, filename, builtin, available=False, error=missing)
        cached = self._entries.get(path)
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns) and cached[2].name == name:
            return cached[2]
        row = self._load_row(path, stat.st_size, stat.st_mtime_ns)
        entry = ModelEntry(
            name=name,
            path=path,
            filename=filename,
            builtin=builtin,
            available=row.error is None,
            size_bytes=stat.st_size,
            variant=row.variant,
            dtype=row.dtype,
            sha256=row.sha256,
            short_hash=row.short_hash,
            parameters=dict(row.parameters or {}),
            native_size=row.native_size,
            error=row.error,
        )
        self._entries[path] = (stat.st_size, stat.st_mtime_ns, entry)
        return entry

    def _load_row(self, path: Path, size: int, mtime_ns: int) -> ModelFile:
        row = self._stored_row(path, size, mtime_ns)
        if row is not None:
            return row
        # The web process and a worker both list models (the worker in its heartbeat): one
        # hashes a new file while the other waits, then reads the row it wrote.
        with _held(self._locks_dir / f"inspect-{_path_key(path)}.lock"):
            row = self._stored_row(path, size, mtime_ns)
            return row if row is not None else self._inspect(path, size, mtime_ns)

    def _stored_row(self, path: Path, size: int, mtime_ns: int) -> ModelFile | None:
        with self._db.session() as session:
            row = session.get(ModelFile, str(path))
            return row if row is not None and (row.size, row.mtime_ns) == (size, mtime_ns) else None

    def _inspect(self, path: Path, size: int, mtime_ns: int) -> ModelFile:
        log.info("inspecting checkpoint %s (hashing %d MB)", path, size // 2**20)
        fresh = ModelFile(path=str(path), size=size, mtime_ns=mtime_ns, checked_at=utcnow())
        try:
            spec = self._generator.inspect_checkpoint(path)
        except (ValueError, OSError) as exc:  # CheckpointError, unreadable: not usable; say why
            # Users see this: the file's name, not where the server keeps it.
            fresh.error = str(exc).replace(str(path), path.name)
            fresh.parameters = {}
        else:
            fresh.sha256, fresh.short_hash = spec.sha256, spec.short_hash
            fresh.variant, fresh.dtype, fresh.parameters = spec.variant, spec.dtype, spec.parameters
            fresh.native_size = spec.native_size
        try:
            with self._db.session() as session:
                session.merge(fresh)
        except IntegrityError:  # another process (a node starting beside it) inspected the same
            # file at the same moment and wrote the row first: that row holds the same facts
            log.info("checkpoint %s: its row was written by another process", path.name)
        return fresh

    def learn_native_size(self, entry: ModelEntry, size: int) -> None:
        """Remember the model's native size once an image made at "native size" shows it."""
        if entry.native_size == size:
            return
        with self._db.session() as session:
            row = session.get(ModelFile, str(entry.path))
            if row is not None:
                row.native_size = size
        with self._lock:
            self._entries.pop(entry.path, None)

    def resolve(self, name: str | None, field: str = "model") -> ModelEntry:
        """The usable model called `name` (None → the built-in); InvalidField lists the others."""
        entries = self.list()
        if name is None:
            found = entries[0]
        else:
            wanted = name.strip()
            matches = [
                e
                for e in entries
                if wanted in (e.name, e.filename, e.path.name, e.title)
                or (e.short_hash is not None and wanted.lower() in (e.short_hash, e.sha256))
            ]
            if not matches:
                usable = ", ".join(e.name for e in entries if e.available) or "none"
                raise InvalidField(field, name, f"installed models: {usable}")
            found = matches[0]
        if not found.available:
            raise InvalidField(field, found.name, f"this model cannot be used: {found.error}")
        return found

    def find(self, name: str) -> ModelEntry | None:
        """Like `resolve` but None for unknown or unusable models (for display)."""
        try:
            return self.resolve(name)
        except InvalidField:
            return None


def _path_key(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:16]


@contextmanager
def _held(lock_file: Path) -> Iterator[None]:
    """An exclusive lock on `lock_file` across processes on this host (flock), held inside."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
