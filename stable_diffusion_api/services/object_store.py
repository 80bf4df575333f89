"""Where the studio's files live: bytes in and out, keyed by relative paths ("images/3/7-0.png").

`ObjectStore` is the small interface every backend gives `ImageStorage` (services/storage.py,
the one door the rest of the service uses); `storage.open_store(url, data_dir)` picks the
backend from `DALI_STORAGE_URL`:

    (empty)              LocalStore(<data folder>)       today's layout, the default
    file:///shared/path  LocalStore(/shared/path)        a file system several hosts mount
    s3://bucket/prefix   S3Store (services/s3_store.py)  an S3-compatible object store

Keys are checked here (`check_key`): relative, '/'-separated, no '.' or '..' part, no
backslash, no empty part. LocalStore also resolves the path (symlinks followed) and refuses one
that lands outside its folder, so no key can read or delete anything else.

Every write is whole or absent: LocalStore writes a temporary file beside the target
(`.<name>.<random>.tmp`), fsyncs it, and renames it over the target; S3 puts are atomic by
themselves. A reader never sees half a file.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlsplit

FILE_MODE = 0o644
CHUNK_SIZE = 64 * 1024
SCHEMES = ("file", "s3")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes, and when it was last written (UTC)."""

    key: str
    size: int
    modified: dt.datetime

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


class ObjectStore(Protocol):
    """Bytes keyed by relative paths. Missing objects: `get`/`chunks` raise FileNotFoundError,
    `head` answers None, `delete` does nothing. Bad keys raise ValueError."""

    url: str  # where it is, for messages (never holds a secret)

    def write(self, key: str, fill: Callable[[IO[bytes]], None]) -> None:
        """Replace `key`'s object with what `fill` writes to the binary file it is given;
        atomic: if `fill` raises, the old object (or none) stays."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Replace `key`'s object with `data`, atomically."""
        ...

    def create(self, key: str) -> bool:
        """Create `key` empty if no object has that key (atomically, across processes and
        hosts); False when one has."""
        ...

    def get(self, key: str) -> bytes: ...

    def open(self, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        """The object's description and its bytes in pieces of at most CHUNK_SIZE, from one
        request (FileNotFoundError at once if it is missing, before any piece)."""
        ...

    def head(self, key: str) -> ObjectInfo | None: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under `prefix` + '/'."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` + '/' (all of them for '')."""
        ...

    def move(self, key: str, target: str) -> None:
        """Give `key`'s object the key `target` (replacing any there); FileNotFoundError if
        it is missing."""
        ...


def check_key(key: str) -> str:
    """`key` if it is a plain relative key; ValueError naming it otherwise."""
    parts = key.split("/")
    if not key or "\\" in key or "\x00" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"key {key!r} is outside the data directory (or not a plain path)")
    return key


def check_prefix(prefix: str) -> str:
    return "" if prefix == "" else check_key(prefix)


class LocalStore:
    """Objects as files under `root` (the data folder, or a `file://` folder)."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.url = self.root.as_uri()

    def path(self, key: str) -> Path:
        """The file for `key`; ValueError if it would be outside the folder (a '..' part, an
        absolute path, a symlink out)."""
        check_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"path {key!r} is outside the data directory")
        return path

    def write(self, key: str, fill: Callable[[IO[bytes]], None]) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Beside the target: os.replace is atomic only within one file system. The leading dot
        # keeps it out of listings of *.png; recovery removes one a crash left.
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the name points at it
            os.chmod(temp, FILE_MODE)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes) -> None:
        def fill(handle: IO[bytes]) -> None:
            handle.write(data)

        self.write(key, fill)

    def create(self, key: str) -> bool:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        except FileExistsError:
            return False
        return True

    def get(self, key: str) -> bytes:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path.read_bytes()

    def open(self, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        handle = path.open("rb")
        stat = os.fstat(handle.fileno())
        return ObjectInfo(key, stat.st_size, _utc(stat.st_mtime)), _read_chunks(handle)

    def head(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return ObjectInfo(key, stat.st_size, _utc(stat.st_mtime))

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            return
        path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.root / check_prefix(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for folder, _dirs, files in os.walk(base):
            for name in sorted(files):
                path = Path(folder) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:  # renamed or deleted meanwhile
                    continue
                key = path.relative_to(self.root).as_posix()
                yield ObjectInfo(key, stat.st_size, _utc(stat.st_mtime))

    def move(self, key: str, target: str) -> None:
        source, destination = self.path(key), self.path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)


def _read_chunks(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while piece := handle.read(CHUNK_SIZE):
            yield piece


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


class StorageConfigError(ValueError):
    """DALI_STORAGE_URL cannot be used; the message names it, the value and what is allowed."""


def check_storage_url(url: str) -> None:
    """StorageConfigError saying what is wrong with a DALI_STORAGE_URL value (empty: the
    data folder, the default)."""
    if not url:
        return
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in SCHEMES:
        problem = f"unknown scheme {parts.scheme or '(none)'!r}"
    elif parts.scheme == "file" and (
        parts.netloc not in ("", "localhost") or not parts.path.startswith("/")
    ):
        problem = "a file URL names an absolute folder"
    elif parts.scheme == "s3" and not parts.netloc:
        problem = "it names no bucket"
    elif parts.query or parts.fragment:
        problem = "a query (?…) or fragment (#…) is not read"
    if problem is not None:
        raise StorageConfigError(
            f"DALI_STORAGE_URL={url!r} cannot be used: {problem}; allowed: file:///a/folder, "
            "s3://bucket or s3://bucket/prefix, or unset (the data folder)"
        )
