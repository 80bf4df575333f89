"""The reverse-process filmstrip a generation keeps, with the fake generator: stored through the
worker, described in the generation's JSON, served as a PNG, shown on the detail page, and gone
with its generation or project. The real engine's strips: tests/api/test_real_engine.py."""

from __future__ import annotations

import io
import re
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for

HTML = {"accept": "text/html"}


def strip_file(settings: Settings, project_id: int, generation_id: int) -> Path:
    return settings.resolved_data_dir / f"images/{project_id}/filmstrips/{generation_id}.png"


def test_a_generation_keeps_its_filmstrip(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"], steps=10, width=128, height=64)["id"])
    assert fake.calls[-1].filmstrip_frames == 8  # the setting's default reaches the engine
    strip = done["filmstrip"]
    assert strip["url"] == f"/api/v1/generations/{done['id']}/filmstrip"
    # The fake draws 64×32 cells for the last 8 steps, σ falling linearly to 0.
    assert (strip["width"], strip["height"]) == (8 * 64, 2 * 32)
    assert [f["step"] for f in strip["frames"]] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert {f["total"] for f in strip["frames"]} == {10}
    first, last = strip["frames"][0], strip["frames"][-1]
    assert first["sigma"] == 7.0 and abs(first["snr"] - 1 / 49) < 1e-12
    assert last["sigma"] == 0.0 and last["snr"] is None  # no noise left: SNR is infinite
    assert strip_file(settings, project["id"], done["id"]).is_file()

    png = client.get(strip["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (512, 64)
    assert "immutable" in png.headers["cache-control"]
    again = client.get(strip["url"], headers={"if-none-match": png.headers["etag"]})
    assert again.status_code == 304
    # The image's own ETag is another one: a cached image never stands in for the strip.
    image = client.get(done["images"][0]["url"])
    assert image.headers["etag"] != png.headers["etag"]

    page = client.get(f"/generations/{done['id']}", headers=HTML).text
    assert f'src="{strip["url"]}"' in page and 'style="--frames: 8"' in page
    assert "Top row" in page and "Bottom row" in page and "signal-to-noise" in page
    assert "step 3/10" in page and "σ = 7" in page and "SNR 0.0204" in page
    assert "step 10/10<br>σ = 0<br>SNR ∞" in page
    assert "No filmstrip" not in page


def test_no_filmstrip_when_turned_off_or_not_finished(
    settings: Settings, fake: FakeGenerator
) -> None:
    off = settings.model_copy(update={"filmstrip_frames": 0})
    with TestClient(create_app(off, fake)) as client:
        project = make_project(client)
        done = wait_for(client, submit(client, project["id"])["id"])
        assert fake.calls[-1].filmstrip_frames == 0
        assert done["filmstrip"] is None
        assert not (settings.resolved_data_dir / f"images/{project['id']}/filmstrips").exists()
        missing = client.get(f"/api/v1/generations/{done['id']}/filmstrip")
        assert missing.status_code == 404
        assert missing.json() == {"detail": f"filmstrip of generation {done['id']} not found"}
        page = client.get(f"/generations/{done['id']}", headers=HTML).text
        assert "No filmstrip was kept for this generation" in page and "/filmstrip" not in page
        assert client.get("/api/v1/generations/999/filmstrip").status_code == 404

        # A canceled run keeps none, on disk or in its row.
        fake.block_at = 2
        running = submit(client, project["id"])
        assert fake.reached.wait(5)
        client.post(f"/api/v1/generations/{running['id']}/cancel")
        fake.release.set()
        canceled = wait_for(client, running["id"], ("canceled",))
        assert canceled["filmstrip"] is None
        page = client.get(f"/generations/{running['id']}", headers=HTML).text
        assert "No filmstrip: this generation canceled" in page


def test_a_run_failing_after_its_strip_was_written_leaves_none(
    client: TestClient, settings: Settings
) -> None:
    project = make_project(client)
    studio = client.app.state.studio  # type: ignore[attr-defined]

    def broken(*args: object) -> None:  # called by the success step, after the files are written
        raise OSError("disk full")

    studio.models.learn_native_size = broken
    failed = wait_for(client, submit(client, project["id"])["id"], ("failed",))
    assert failed["filmstrip"] is None and "disk full" in failed["error"]
    assert not list((settings.resolved_data_dir / "images").rglob("*.png"))


def test_deleting_removes_the_strip(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"])["id"])
    path = strip_file(settings, project["id"], done["id"])
    assert path.is_file()
    assert client.delete(f"/api/v1/generations/{done['id']}").status_code == 204
    assert not path.exists()

    other = make_project(client, "Other")
    kept = wait_for(client, submit(client, other["id"])["id"])
    path = strip_file(settings, other["id"], kept["id"])
    assert path.is_file()
    deleted = client.delete(f"/api/v1/projects/{other['id']}", params={"confirm": "true"})
    assert deleted.status_code == 204
    assert not path.exists()


def test_recovery_forgets_a_lost_strip_and_quarantines_a_stray_one(
    settings: Settings, fake: FakeGenerator
) -> None:
    with TestClient(create_app(settings, fake)) as client:
        project = make_project(client)
        lost = wait_for(client, submit(client, project["id"])["id"])
        kept = wait_for(client, submit(client, project["id"])["id"])
    strip_file(settings, project["id"], lost["id"]).unlink()
    stray = strip_file(settings, project["id"], 999)  # written just before a crash
    stray.write_bytes(b"half a strip")
    with TestClient(create_app(settings, fake)) as client:
        assert client.get(f"/api/v1/generations/{lost['id']}").json()["filmstrip"] is None
        assert client.get(kept["filmstrip"]["url"]).status_code == 200
    assert not stray.exists()
    data = settings.resolved_data_dir
    assert (data / "quarantine" / stray.relative_to(data)).read_bytes() == b"half a strip"


def test_the_generation_page_labels_each_column(client: TestClient) -> None:
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"], steps=3)["id"])
    page = client.get(f"/generations/{done['id']}", headers=HTML).text
    labels = re.findall(r"<li>step (\d+)/3", page)
    assert labels == ["1", "2", "3"]  # fewer steps than frames: every step
