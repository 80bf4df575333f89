"""The studio on S3 (`DALI_STORAGE_URL=s3://…`, a real moto server, tests/s3.py): every image,
thumbnail, filmstrip and uploaded input goes to the bucket, is served from it, and nothing lands
in the web host's data folder; recovery quarantines through the store and respects the grace
period. One test drives a real uvicorn generating with the built-in model."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from stable_diffusion_api.services.identity import StudioMismatch
from stable_diffusion_api.services.object_store import StorageConfigError
from stable_diffusion_api.services.s3_store import S3Store
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for
from tests.s3 import S3Server
from tests.servers import ROOT, free_port, serving

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def files_in(folder: Path) -> list[str]:
    """Every image file under `folder` (none is the goal: the store holds them)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket, and this process's (and so its worker processes') AWS_* variables."""
    name = s3.new_bucket()
    for key, value in s3.environment(name).items():
        monkeypatch.setenv(key, value)
    return name


@pytest.fixture
def s3_settings(settings: Settings, bucket: str) -> Settings:
    return settings.model_copy(update={"storage_url": f"s3://{bucket}/studio"})


@pytest.fixture
def s3_client(s3_settings: Settings, fake: FakeGenerator) -> Iterator[TestClient]:
    with TestClient(create_app(s3_settings, fake)) as test_client:
        yield test_client
    fake.release.set()


def test_generated_files_live_in_the_bucket_and_are_served_from_it(
    s3_client: TestClient, s3_settings: Settings, s3: S3Server, bucket: str
) -> None:
    client = s3_client
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"], width=128, height=64, batch=2)["id"])
    pid, gid = project["id"], done["id"]
    assert s3.keys(bucket) == [
        "studio/.dali-studio-id",  # the store is bound to this studio's database
        f"studio/images/{pid}/{gid}-0.png",
        f"studio/images/{pid}/{gid}-1.png",
        f"studio/images/{pid}/filmstrips/{gid}.png",
        f"studio/images/{pid}/thumbs/{gid}-0.jpg",
        f"studio/images/{pid}/thumbs/{gid}-1.jpg",
    ]
    image = done["images"][0]
    png = client.get(image["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    stored = s3.client().get_object(Bucket=bucket, Key=f"studio/images/{pid}/{gid}-0.png")
    assert png.content == stored["Body"].read()
    assert png.headers["content-length"] == str(len(png.content))
    assert "immutable" in png.headers["cache-control"] and png.headers["last-modified"]
    with Image.open(io.BytesIO(png.content)) as decoded:
        assert decoded.size == (128, 64) and decoded.info["parameters"] == image["parameters"]
    again = client.get(image["url"], headers={"if-none-match": png.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    thumb = client.get(image["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    strip = client.get(done["filmstrip"]["url"])
    assert strip.status_code == 200 and strip.content.startswith(b"\x89PNG")

    # An init image goes to the bucket too; deleting the generation deletes its objects.
    init = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(init, format="PNG")
    body = {"init_image": base64.b64encode(init.getvalue()).decode(), "width": 64, "height": 64}
    img2img = wait_for(client, submit(client, pid, **body)["id"])
    assert f"studio/inputs/{img2img['id']}/init.png" in s3.keys(bucket)
    assert client.delete(f"/api/v1/generations/{img2img['id']}").status_code == 204
    assert [k for k in s3.keys(bucket) if f"/{img2img['id']}" in k] == []

    # A1111's txt2img answers with the PNG read from the store.
    answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64})
    assert answer.status_code == 200, answer.text
    sent = base64.b64decode(answer.json()["images"][0])
    assert sent.startswith(b"\x89PNG") and sent in [
        s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        for key in s3.keys(bucket)
        if key.endswith("-0.png")
    ]

    assert files_in(s3_settings.resolved_data_dir) == []  # nothing on the web host's disk


def test_a_store_out_of_reach_is_a_503_naming_it_not_a_500(
    s3_client: TestClient, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3_client
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"])["id"])
    storage = client.app.state.studio.storage  # type: ignore[attr-defined]
    # The same bucket behind an address nothing answers on, retried briefly (the default
    # retries with back-off for minutes, so that a node rides out an outage).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    brief = {"max_retries": 1, "retry_timeout": timedelta(seconds=1)}
    monkeypatch.setattr(storage, "store", S3Store(bucket, "studio", retry=brief))
    answer = client.get(done["images"][0]["url"])
    assert answer.status_code == 503, answer.text
    assert f"s3://{bucket}/studio cannot be reached now" in answer.json()["detail"]
    assert client.get(done["images"][0]["thumbnail_url"]).status_code == 503


def test_recovery_quarantines_strays_in_the_bucket_after_the_grace_period(
    s3_settings: Settings, fake: FakeGenerator, s3: S3Server, bucket: str
) -> None:
    with TestClient(create_app(s3_settings, fake)) as client:
        project = make_project(client)
        kept = wait_for(client, submit(client, project["id"], width=64, height=64)["id"])
    stray = f"studio/images/{project['id']}/{kept['id'] + 50}-0.png"  # its row never written
    s3.client().put_object(Bucket=bucket, Key=stray, Body=b"half an image")

    patient = s3_settings.model_copy(update={"orphan_grace_s": 3600.0})
    with TestClient(create_app(patient, fake)) as client:  # another node may write its row
        assert client.get(kept["images"][0]["url"]).status_code == 200
    assert stray in s3.keys(bucket)

    with TestClient(create_app(s3_settings, fake)) as client:  # grace 0: quarantined
        assert client.get(kept["images"][0]["url"]).status_code == 200
    keys = s3.keys(bucket)
    assert stray not in keys and stray.replace("studio/", "studio/quarantine/") in keys
    assert f"studio/images/{project['id']}/{kept['id']}-0.png" in keys  # its row's file stays


def test_another_studio_on_the_same_bucket_refuses_to_start(
    s3_settings: Settings, fake: FakeGenerator, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """Its recovery would take every image of the bucket for an orphan: the store is bound to
    its database by the studio id (`.dali-studio-id` at the prefix's root)."""
    with TestClient(create_app(s3_settings, fake)) as client:
        project = make_project(client)
        wait_for(client, submit(client, project["id"], width=64, height=64)["id"])
    before = s3.keys(bucket)
    assert "studio/.dali-studio-id" in before
    other_data = tmp_path / "other"
    other = s3_settings.model_copy(update={"data_dir": other_data, "models_dir": other_data})
    with (
        pytest.raises(StudioMismatch, match="file store 's3://.*never seen it.*DALI_STORAGE_URL"),
        TestClient(create_app(other, fake)),
    ):
        pass
    assert s3.keys(bucket) == before  # nothing moved


def test_a_bad_storage_url_stops_the_app(settings: Settings) -> None:
    bad = settings.model_copy(update={"storage_url": "s3:///no-bucket"})
    with pytest.raises(StorageConfigError, match="DALI_STORAGE_URL='s3:///no-bucket'"):
        create_app(bad, None)


@pytest.mark.server
def test_a_real_server_on_s3_generates_with_the_built_in_model(
    tmp_path: Path, s3: S3Server
) -> None:
    bucket = s3.new_bucket()
    data = tmp_path / "web-host"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DALI_", "AWS_"))}
    # Thread workers: a start without a second process is faster; worker processes on S3 are
    # covered by the tests above (their settings keep the default, "process").
    env |= {"DALI_DATA_DIR": str(data), "OMP_NUM_THREADS": "1", "DALI_WORKER_MODE": "thread"}
    env |= s3.environment(bucket)
    log = tmp_path / "server.log"
    with (
        serving("dali_app.py", free_port(), env, log, "/api/v1/health") as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        project = http.post("/api/v1/projects", json={"name": "on S3"}).json()
        body = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64}
        job = http.post(f"/api/v1/projects/{project['id']}/generations", json=body).json()
        done = poll(http, job["id"])
        assert done["status"] == "succeeded", done
        png = http.get(done["images"][0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    key = f"images/{project['id']}/{job['id']}-0.png"
    assert key in s3.keys(bucket)
    assert png.content == s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert files_in(data) == []


def poll(http: httpx.Client, generation_id: int, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = http.get(f"/api/v1/generations/{generation_id}").json()
        if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return body
        time.sleep(0.2)


@pytest.mark.server
def test_a_bad_storage_url_stops_the_server_before_it_serves(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DALI_")}
    env |= {"DALI_DATA_DIR": str(tmp_path / "data"), "DALI_PORT": str(free_port())}
    env |= {"DALI_STORAGE_URL": "gs://bucket/x", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "stable_diffusion_api"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "StorageConfigError" in output and "DALI_STORAGE_URL='gs://bucket/x'" in output, output
    assert "unknown scheme 'gs'" in output and "Uvicorn running" not in output
