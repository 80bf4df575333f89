"""The object-store contract (services/object_store.py), the same for every backend: the data
folder, a `file://` folder, and S3 (a real moto server through obstore, tests/s3.py)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from PIL import Image

from stable_diffusion_api.services.object_store import (
    CHUNK_SIZE,
    ObjectStore,
    StorageConfigError,
)
from stable_diffusion_api.services.storage import ImageStorage, open_store
from tests.s3 import S3Server

BACKENDS = ("local", "file", "s3")


@pytest.fixture(params=BACKENDS)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield open_store("", tmp_path / "data")
    elif request.param == "file":
        yield open_store((tmp_path / "shared folder").as_uri(), tmp_path / "data")
    else:
        s3: S3Server = request.getfixturevalue("s3")
        bucket = s3.new_bucket()
        for name, value in s3.environment(bucket).items():
            monkeypatch.setenv(name, value)
        yield open_store(f"s3://{bucket}/studio", tmp_path / "data")


def test_put_get_head_delete(store: ObjectStore) -> None:
    assert store.head("images/1/1-0.png") is None
    with pytest.raises(FileNotFoundError):
        store.get("images/1/1-0.png")
    store.put("images/1/1-0.png", b"first")
    store.put("images/1/1-0.png", b"second, longer")  # replaced whole
    assert store.get("images/1/1-0.png") == b"second, longer"
    info = store.head("images/1/1-0.png")
    assert info is not None and (info.key, info.size) == ("images/1/1-0.png", 14)
    assert info.modified.tzinfo is not None
    store.delete("images/1/1-0.png")
    store.delete("images/1/1-0.png")  # a missing object: nothing to do
    assert store.head("images/1/1-0.png") is None


def test_a_failed_write_leaves_the_old_object(store: ObjectStore) -> None:
    store.put("inputs/3/init.png", b"old")

    def half(handle: IO[bytes]) -> None:
        handle.write(b"half of the new one")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.write("inputs/3/init.png", half)
    assert store.get("inputs/3/init.png") == b"old"
    assert [i.key for i in store.list("inputs")] == ["inputs/3/init.png"]  # no temporary left


def test_chunks_stream_the_whole_object(store: ObjectStore) -> None:
    data = os.urandom(2 * CHUNK_SIZE + 123)
    store.put("images/1/filmstrips/1.png", data)
    info, stream = store.open("images/1/filmstrips/1.png")
    assert (info.key, info.size) == ("images/1/filmstrips/1.png", len(data))
    pieces = list(stream)
    assert b"".join(pieces) == data and len(pieces) >= 3
    assert all(len(piece) <= CHUNK_SIZE for piece in pieces)
    with pytest.raises(FileNotFoundError):
        store.open("images/1/filmstrips/2.png")


def test_create_claims_a_key_once(store: ObjectStore) -> None:
    assert store.create("images/2/5-1.png") is True
    assert store.create("images/2/5-1.png") is False
    assert store.get("images/2/5-1.png") == b""
    storage = ImageStorage(store)
    assert storage.claim_image_paths(2, 5, 1) == ("images/2/5-2.png", "images/2/thumbs/5-2.jpg")


def test_list_is_by_folder_and_move_renames(store: ObjectStore) -> None:
    for key in ("images/1/1-0.png", "images/1/thumbs/1-0.jpg", "images10/x.png", "inputs/1/a"):
        store.put(key, key.encode())
    assert sorted(i.key for i in store.list("images")) == [
        "images/1/1-0.png",
        "images/1/thumbs/1-0.jpg",
    ]
    assert len(list(store.list(""))) == 4
    store.move("images/1/1-0.png", "quarantine/images/1/1-0.png")
    assert store.head("images/1/1-0.png") is None
    assert store.get("quarantine/images/1/1-0.png") == b"images/1/1-0.png"
    with pytest.raises(FileNotFoundError):
        store.move("images/1/1-0.png", "quarantine/again.png")
    store.delete_prefix("images/1")
    assert list(store.list("images")) == []
    assert store.get("images10/x.png") == b"images10/x.png"


@pytest.mark.parametrize(
    "bad", ["../secret", "images/../../secret", "/etc/passwd", "images//x", "a\\b", "", "./x"]
)
def test_keys_that_leave_the_store_are_refused(store: ObjectStore, bad: str) -> None:
    with pytest.raises(ValueError, match="outside the data directory"):
        store.get(bad)
    with pytest.raises(ValueError):
        store.put(bad, b"x")
    storage = ImageStorage(store)
    assert storage.open_stream(bad) is None and not storage.exists(bad)


def test_image_storage_round_trips_and_quarantines(store: ObjectStore) -> None:
    storage = ImageStorage(store)
    image = Image.new("RGB", (64, 32), (10, 200, 30))
    png, thumb = storage.image_paths(4, 9, 0)
    storage.save_png(image, png, parameters="a cat\nSteps: 3", dali={"seed": 1})
    storage.write_thumbnail(image, thumb)
    with storage.open_image(png) as back:
        assert back.format == "PNG" and back.size == (64, 32)
        assert back.info["parameters"] == "a cat\nSteps: 3" and back.info["dali"] == '{"seed": 1}'
    with Image.open(io.BytesIO(storage.read(thumb))) as small:
        assert small.format == "JPEG"
    assert storage.local_file(png).read_bytes() == storage.read(png)

    # Freshly written: inside a grace period recovery would not touch them.
    assert storage.generation_files(settled_for_s=3600) == {}
    assert sorted(storage.generation_files()[9]) == [png, thumb]
    moved = storage.quarantine(png)
    assert moved == f"quarantine/{png}" and not storage.exists(png)
    storage.save_png(image, png)
    again = storage.quarantine(png)  # the same name once more: both kept
    assert again != moved and storage.exists(moved) and storage.exists(again)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://host/x", "unknown scheme 'ftp'"),
        ("/plain/path", "unknown scheme '(none)'"),
        ("s3://", "names no bucket"),
        ("s3:///prefix", "names no bucket"),
        ("file://relative/folder", "absolute folder"),
        ("s3://bucket?region=x", "query"),
    ],
)
def test_a_bad_storage_url_names_the_variable(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(StorageConfigError) as refused:
        open_store(url, tmp_path)
    message = str(refused.value)
    assert message.startswith(f"DALI_STORAGE_URL={url!r}") and problem in message
    assert "s3://bucket/prefix" in message  # what is allowed
