"""The S3 backend of the object store (`DALI_STORAGE_URL=s3://bucket/prefix`), on obstore.

Connection settings come from the standard variables: `AWS_ENDPOINT_URL` (for MinIO, Ceph,
moto…; an http:// endpoint is allowed), `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_REGION` (default us-east-1). Every key is stored under the URL's prefix. Why obstore and
not boto3: docs/benchmarks.md, "Object store client".

S3 has no rename: `move` copies, then deletes the source (a crash between leaves both, and
nothing lost). `create` is a conditional put (If-None-Match: *), so two hosts never claim the
same key.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, NotFoundError, PreconditionError
from obstore.store import S3Store as ObstoreS3

from stable_diffusion_api.errors import StoreUnavailable
from stable_diffusion_api.services.object_store import (
    CHUNK_SIZE,
    ObjectInfo,
    check_key,
    check_prefix,
)

DEFAULT_REGION = "us-east-1"
# obstore raises Python's FileNotFoundError for a missing object (its NotFoundError, too).
MISSING = (FileNotFoundError, NotFoundError)


class S3Store:
    """Objects in `bucket` under `prefix` (no leading or trailing '/'; '' for the whole
    bucket)."""

    def __init__(self, bucket: str, prefix: str = "", retry: dict[str, Any] | None = None) -> None:
        """`retry`: obstore's RetryConfig (default: its own, retrying a failed request with
        back-off for up to three minutes: a node that loses the store for a while carries
        on)."""
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        config: dict[str, Any] = {"region": os.environ.get("AWS_REGION") or DEFAULT_REGION}
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            config["endpoint"] = endpoint
        for name, variable in (
            ("access_key_id", "AWS_ACCESS_KEY_ID"),
            ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ):
            if os.environ.get(variable):
                config[name] = os.environ[variable]
        options: Any = {"allow_http": True} if endpoint and endpoint.startswith("http://") else None
        self._store = ObstoreS3(
            bucket,
            prefix=prefix or None,
            config=config,  # type: ignore[arg-type]  # a plain dict of S3Config keys
            client_options=options,
            retry_config=retry,  # type: ignore[arg-type]  # a plain dict of RetryConfig keys
        )

    def write(self, key: str, fill: Callable[[IO[bytes]], None]) -> None:
        buffer = io.BytesIO()
        fill(buffer)
        self.put(key, buffer.getvalue())

    def put(self, key: str, data: bytes) -> None:
        obstore.put(self._store, check_key(key), data)

    def create(self, key: str) -> bool:
        try:
            obstore.put(self._store, check_key(key), b"", mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        return True

    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, check_key(key)).bytes())
        except MISSING:
            raise FileNotFoundError(key) from None
        except (BaseError, OSError) as exc:
            raise StoreUnavailable(self.url, type(exc).__name__) from exc

    def open(self, key: str) -> tuple[ObjectInfo, Iterator[bytes]]:
        try:
            result = obstore.get(self._store, check_key(key))
        except MISSING:
            raise FileNotFoundError(key) from None
        except (BaseError, OSError) as exc:
            raise StoreUnavailable(self.url, type(exc).__name__) from exc
        meta = result.meta
        info = ObjectInfo(key, meta["size"], meta["last_modified"])
        return info, _pieces(result.stream(min_chunk_size=CHUNK_SIZE))

    def head(self, key: str) -> ObjectInfo | None:
        try:
            meta = obstore.head(self._store, check_key(key))
        except MISSING:
            return None
        return ObjectInfo(key, meta["size"], meta["last_modified"])

    def delete(self, key: str) -> None:
        with contextlib.suppress(*MISSING):  # S3 answers a missing key's delete with 204
            obstore.delete(self._store, check_key(key))

    def delete_prefix(self, prefix: str) -> None:
        for info in self.list(check_key(prefix)):
            self.delete(info.key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        prefix = check_prefix(prefix)
        for batch in obstore.list(self._store, prefix or None):
            for meta in batch:
                yield ObjectInfo(meta["path"], meta["size"], meta["last_modified"])

    def move(self, key: str, target: str) -> None:
        try:
            obstore.copy(self._store, check_key(key), check_key(target))
        except MISSING:
            raise FileNotFoundError(key) from None
        self.delete(key)


def _pieces(stream: Iterable[Any]) -> Iterator[bytes]:
    """The stream's buffers cut to at most CHUNK_SIZE bytes (obstore's are at least that)."""
    for buffer in stream:
        data = memoryview(bytes(buffer))
        for start in range(0, len(data), CHUNK_SIZE):
            yield bytes(data[start : start + CHUNK_SIZE])
