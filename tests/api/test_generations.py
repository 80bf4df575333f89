"""Generations over HTTP with the fake generator: queueing, defaults, validation, listing."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def test_submit_is_202_and_the_row_exists_before_the_answer(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    fake.block_at = 1  # nothing finishes while we look
    project = make_project(client)
    response = client.post(
        f"/api/v1/projects/{project['id']}/generations", json={"prompt": "a red circle"}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["position"] == 0
    assert response.headers["location"] == f"/api/v1/generations/{body['id']}"
    # Read the SQLite file directly, bypassing the app: the job is durable already.
    with sqlite3.connect(settings.resolved_data_dir / "dali.db") as db:
        rows = db.execute("SELECT id, prompt FROM generations").fetchall()
    assert rows == [(body["id"], "a red circle")]
    fake.release.set()
    done = wait_for(client, body["id"])
    assert len(done["images"]) == 1


def test_project_defaults_fill_what_the_request_leaves_out(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(
        client,
        device="cuda:0",
        dtype="float16",
        low_memory=True,
        defaults={"steps": 7, "guidance": 3.5, "sampler": "DDIM", "width": 128, "height": 96,
                  "negative_prompt": "blurry"},
    )  # fmt: skip
    job = submit(client, project["id"], steps=None, seed=1234, batch=2)
    done = wait_for(client, job["id"])
    model, spec = fake.calls[-1].model, fake.calls[-1].params
    assert (model.device, model.dtype, model.low_memory) == ("cuda:0", "float16", True)
    assert (spec.steps, spec.guidance, spec.sampler) == (7, 3.5, "ddim")
    assert (spec.width, spec.height, spec.negative_prompt) == (128, 96, "blurry")
    assert model.checkpoint.name == "dali-tiny.safetensors" and model.model_name == "dali-tiny"
    assert [i["seed"] for i in done["images"]] == [1234, 1235]
    assert {(i["width"], i["height"]) for i in done["images"]} == {(128, 96)}
    assert done["model_hash"] and done["step_seconds"] is not None

    override = submit(
        client, project["id"], sampler="euler", steps=3, guidance=0, width=64, height=64,
        negative_prompt="", device="cpu",
    )  # fmt: skip
    wait_for(client, override["id"])
    model, spec = fake.calls[-1].model, fake.calls[-1].params
    assert (spec.sampler, spec.steps, spec.guidance, spec.negative_prompt) == ("euler", 3, 0, "")
    assert (model.device, model.dtype) == ("cpu", None)


def test_the_default_sampler_is_recorded_as_the_one_that_ran(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    fake.block_at = 1
    job = submit(client, project["id"])
    assert client.get(f"/api/v1/generations/{job['id']}").json()["sampler"] is None
    fake.release.set()
    done = wait_for(client, job["id"])
    assert fake.calls[-1].params.sampler is None and done["sampler"] == "euler_a"


def test_random_seed_is_drawn_at_submission_and_recorded(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    seeds = set()
    for seed in (None, -1, None):
        job = submit(client, project["id"], seed=seed)
        done = wait_for(client, job["id"])
        assert done["seed"] == done["images"][0]["seed"] == fake.calls[-1].params.seed
        seeds.add(done["seed"])
    assert len(seeds) == 3


def test_variation_seeds_reach_the_engine(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    plain = wait_for(client, submit(client, project["id"], variation_seed=5)["id"])
    assert plain["variation_seed"] is None and fake.calls[-1].params.variation_strength == 0
    chosen = wait_for(client, submit(client, project["id"], variation_seed=5,
                                     variation_strength=0.25)["id"])  # fmt: skip
    assert (chosen["variation_seed"], chosen["variation_strength"]) == (5, 0.25)
    assert (fake.calls[-1].params.variation_seed, fake.calls[-1].params.variation_strength) == (
        5,
        0.25,
    )
    drawn = wait_for(client, submit(client, project["id"], variation_strength=0.5)["id"])
    assert (
        drawn["variation_seed"] is not None
        and fake.calls[-1].params.variation_seed == drawn["variation_seed"]
    )


def test_invalid_requests_are_422_naming_the_field(client: TestClient) -> None:
    project = make_project(client)
    url = f"/api/v1/projects/{project['id']}/generations"
    cases = {
        "prompt": [{}, {"prompt": ""}, {"prompt": "   "}, {"prompt": "x" * 2001},
                   {"prompt": "a\x00b"}],
        "steps": [{"steps": 0}, {"steps": 151}, {"steps": "many"}],
        "guidance": [{"guidance": -1}, {"guidance": 30.5}, {"guidance": "nan"}],
        "width": [{"width": 100}, {"width": 32}, {"width": 4096}],
        "height": [{"height": 63}],
        "batch": [{"batch": 0}, {"batch": 9}],
        "seed": [{"seed": -2}, {"seed": 2**32}],
        "strength": [{"strength": 1.5}],
        "variation_strength": [{"variation_strength": -0.1}],
        "variation_seed": [{"variation_seed": 2**40}],
        "sampler": [{"sampler": "warp"}],
        "model": [{"model": "sd-v9"}, {"model": "../../etc/passwd"}],
        "device": [{"device": "tpu"}],
        "dtype": [{"dtype": "float16"}],
        "init_image": [{"init_image": "not base64!"}, {"init_image": "aGVsbG8="}],
        "mask": [{"mask": "aGVsbG8="}],
        "unknown": [{"unknown": 1}],
    }  # fmt: skip
    for field, bodies in cases.items():
        for body in bodies:
            payload = {"prompt": "a red circle", **body}
            if field == "prompt":
                payload = body
            response = client.post(url, json=payload)
            assert response.status_code == 422, (field, body, response.text)
            locs = [e["loc"] for e in response.json()["detail"]]
            assert any(loc[-1] == field or field in loc for loc in locs), (field, locs)
    assert client.get(f"/api/v1/projects/{project['id']}/generations").json()["total"] == 0
    missing = client.post("/api/v1/projects/999/generations", json={"prompt": "a"})
    assert missing.status_code == 404


def test_listing_is_paginated_newest_first(client: TestClient) -> None:
    project = make_project(client)
    ids = [submit(client, project["id"], prompt=f"job {i}")["id"] for i in range(5)]
    for job_id in ids:
        wait_for(client, job_id)
    url = f"/api/v1/projects/{project['id']}/generations"
    first = client.get(url, params={"limit": 2}).json()
    assert first["total"] == 5 and [g["id"] for g in first["items"]] == ids[::-1][:2]
    rest = client.get(url, params={"offset": 2, "limit": 10}).json()
    assert [g["id"] for g in rest["items"]] == ids[::-1][2:]
    assert client.get(url, params={"status": "succeeded"}).json()["total"] == 5
    assert client.get(url, params={"status": "failed"}).json()["total"] == 0
    assert client.get(url, params={"status": "bogus"}).status_code == 422
    assert client.get(url, params={"limit": 0}).status_code == 422
    assert client.get(url, params={"limit": 101}).status_code == 422
    assert client.get(url, params={"offset": -1}).status_code == 422


def test_delete_generation_removes_rows_and_files(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"], batch=2)["id"])
    paths = list((settings.resolved_data_dir / "images").rglob("*.*"))
    assert len(paths) == 5  # two PNGs, two thumbnails, the filmstrip
    assert client.delete(f"/api/v1/generations/{done['id']}").status_code == 204
    assert client.get(f"/api/v1/generations/{done['id']}").status_code == 404
    assert client.get(f"/api/v1/images/{done['images'][0]['id']}").status_code == 404
    assert not any(p.exists() for p in paths)
    assert client.delete(f"/api/v1/generations/{done['id']}").status_code == 404

    fake.block_at = 2
    running = submit(client, project["id"])
    assert fake.reached.wait(5)
    refused = client.delete(f"/api/v1/generations/{running['id']}")
    assert refused.status_code == 409 and "cancel it first" in refused.json()["detail"]
    fake.release.set()
    wait_for(client, running["id"])


def test_a_finished_run_says_where_its_time_went(settings: Settings, fake: FakeGenerator) -> None:
    every_step = settings.model_copy(update={"progress_interval_s": 0.0})
    with TestClient(create_app(every_step, fake)) as client:
        studio = client.app.state.studio  # type: ignore[attr-defined]
        fake.step_delay = 0.03  # the engine's own work: 5 × 30 ms
        step, write_thumbnail = studio.hub.step, studio.storage.write_thumbnail

        def slow_step(*args: object) -> None:  # progress reporting the engine waits for
            time.sleep(0.05)
            step(*args)

        def slow_thumbnail(*args: object) -> None:  # saving
            time.sleep(0.2)
            write_thumbnail(*args)

        studio.hub.step, studio.storage.write_thumbnail = slow_step, slow_thumbnail
        project = make_project(client)
        done = wait_for(client, submit(client, project["id"], steps=5)["id"])
        timings = done["timings"]
        assert 0.15 <= timings["engine_s"] < 0.25  # the reporting it waited for is not counted
        assert 0.25 <= timings["reporting_s"] < 0.35
        assert 0.2 <= timings["saving_s"] < 0.3
        started, finished = (
            dt.datetime.fromisoformat(done[k]) for k in ("started_at", "finished_at")
        )
        assert sum(timings.values()) <= (finished - started).total_seconds()

        fake.fail_with = ValueError("no")
        failed = wait_for(client, submit(client, project["id"], steps=2)["id"], ("failed",))
        assert failed["timings"] is None


def test_progress_is_reported_at_most_every_interval_first_and_last_always(
    client: TestClient, fake: FakeGenerator
) -> None:
    studio = client.app.state.studio  # type: ignore[attr-defined]
    reported: list[int] = []
    previews: list[int] = []
    drawn: list[float] = []
    step, preview = studio.hub.step, studio.hub.preview

    def counting_step(generation_id: int, at: int, *rest: object) -> None:
        reported.append(at)
        step(generation_id, at, *rest)

    def counting_preview(generation_id: int, png: bytes, at: int) -> None:
        previews.append(at)
        drawn.append(time.monotonic())
        preview(generation_id, png, at)

    studio.hub.step, studio.hub.preview = counting_step, counting_preview
    fake.step_delay = 0.02  # 30 steps in 0.6 s: about 7 reports, not 30
    project = make_project(client)
    done = wait_for(client, submit(client, project["id"], steps=30)["id"])
    assert done["status"] == "succeeded"
    assert reported[0] == 1 and reported[-1] == 30 and reported == sorted(reported)
    assert 4 <= len(reported) <= 12
    # Previews ride on reports, at least `preview_every` (3) steps and `preview_interval_s`
    # (0.25 s) apart, never at the last step.
    assert previews and set(previews) <= set(reported) and 30 not in previews
    assert all(b - a >= 3 for a, b in zip(previews, previews[1:], strict=False))
    assert all(b - a >= 0.24 for a, b in zip(drawn, drawn[1:], strict=False))
    assert len(previews) <= 3  # 0.6 s of sampling


def test_a_project_deleted_while_its_job_is_checked_is_404_not_a_500(
    client: TestClient, settings: Settings
) -> None:
    project = make_project(client)
    queue = client.app.state.studio.generations._queue  # type: ignore[attr-defined]
    read = queue.project

    def read_then_delete(project_id: int) -> object:
        found = read(project_id)  # the POST has seen the project …
        with sqlite3.connect(settings.resolved_data_dir / "dali.db") as db:
            db.execute("DELETE FROM projects WHERE id = ?", (project_id,))  # … then it goes
        return found

    queue.project = read_then_delete
    response = client.post(
        f"/api/v1/projects/{project['id']}/generations", json={"prompt": "a red circle"}
    )
    assert response.status_code == 404, response.text
    assert str(project["id"]) in response.text
    with sqlite3.connect(settings.resolved_data_dir / "dali.db") as db:
        assert db.execute("SELECT COUNT(*) FROM generations").fetchone() == (0,)
