"""Queue mechanics with the fake generator: order, cancel, failure, a full queue."""

from __future__ import annotations

from fastapi.testclient import TestClient

from stable_diffusion_api.config import Settings
from stable_diffusion_api.sd_api import create_app
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for


def test_one_device_runs_jobs_one_at_a_time_in_submission_order(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    fake.block_at = 1
    first = submit(client, project["id"], prompt="job 0")
    assert fake.reached.wait(5)
    rest = [submit(client, project["id"], prompt=f"job {i}") for i in range(1, 5)]
    # Positions count the running job and the queued ones ahead.
    assert [job["position"] for job in rest] == [1, 2, 3, 4]
    waiting = client.get(f"/api/v1/generations/{rest[2]['id']}").json()
    assert waiting["status"] == "queued" and waiting["position"] == 3
    # The listing (positions from one look at the queue) agrees, a job on another device
    # (its own queue) at position 0.
    other = submit(client, project["id"], device="cuda:0", prompt="elsewhere")
    listed = client.get(f"/api/v1/projects/{project['id']}/generations").json()["items"]
    by_id = {job["id"]: job["position"] for job in listed}
    assert [by_id[job["id"]] for job in rest] == [1, 2, 3, 4] and by_id[first["id"]] is None
    assert by_id[other["id"]] in (0, None)  # it may have started already
    assert client.get(f"/api/v1/generations/{first['id']}").json()["status"] == "running"
    fake.block_at = None
    fake.release.set()
    finished = [wait_for(client, job["id"]) for job in [first, *rest]]
    wait_for(client, other["id"])
    ours = [spec.params.prompt for spec in fake.calls if spec.model.device == "cpu"]
    assert ours == [f"job {i}" for i in range(5)]
    starts = [job["started_at"] for job in finished]
    ends = [job["finished_at"] for job in finished]
    assert starts == sorted(starts)
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))


def test_devices_have_their_own_queues(client: TestClient, fake: FakeGenerator) -> None:
    cpu = make_project(client, "cpu")
    gpu = make_project(client, "gpu", device="cuda:0")
    fake.block_at = 2
    blocked = submit(client, cpu["id"], prompt="slow cpu job")
    assert fake.reached.wait(5)
    fake.block_at = None
    other = submit(client, gpu["id"], prompt="gpu job")
    assert other["position"] == 0  # the CPU's running job is not ahead of it
    assert wait_for(client, other["id"])["status"] == "succeeded"
    assert client.get(f"/api/v1/generations/{blocked['id']}").json()["status"] == "running"
    fake.release.set()
    wait_for(client, blocked["id"])


def test_cancel_a_running_job_stops_it_within_one_step(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    project = make_project(client)
    fake.block_at = 3
    job = submit(client, project["id"], prompt="long", steps=50)
    assert fake.reached.wait(5)
    response = client.post(f"/api/v1/generations/{job['id']}/cancel")
    assert response.status_code == 200
    fake.release.set()
    done = wait_for(client, job["id"], ("canceled", "succeeded", "failed"))
    assert done["status"] == "canceled" and done["images"] == []
    # The step that was in flight finished; the next poll of `should_cancel` stopped it.
    assert fake.steps_run["long"] == 3
    assert not list((settings.resolved_data_dir / "images").rglob("*.png"))
    again = client.post(f"/api/v1/generations/{job['id']}/cancel")
    assert again.status_code == 409 and "already canceled" in again.json()["detail"]


def test_cancel_a_queued_job_means_it_never_runs(client: TestClient, fake: FakeGenerator) -> None:
    project = make_project(client)
    fake.block_at = 1
    running = submit(client, project["id"], prompt="first")
    assert fake.reached.wait(5)
    queued = submit(client, project["id"], prompt="second")
    canceled = client.post(f"/api/v1/generations/{queued['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    fake.release.set()
    wait_for(client, running["id"])
    third = wait_for(client, submit(client, project["id"], prompt="third")["id"])
    assert third["status"] == "succeeded"
    assert [spec.params.prompt for spec in fake.calls] == ["first", "third"]
    assert client.post("/api/v1/generations/999/cancel").status_code == 404


def test_a_failure_is_recorded_with_its_reason_and_the_worker_carries_on(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client)
    fake.fail_with = ValueError("width 96 is not allowed; the model needs multiples of 64")
    failed = wait_for(client, submit(client, project["id"])["id"], ("failed", "succeeded"))
    assert failed["status"] == "failed"
    assert failed["error"] == "width 96 is not allowed; the model needs multiples of 64"
    assert failed["images"] == []

    fake.fail_with = RuntimeError("CUDA out of memory")
    crashed = wait_for(client, submit(client, project["id"])["id"], ("failed", "succeeded"))
    assert crashed["error"] == "internal error: RuntimeError: CUDA out of memory"

    fake.fail_with = None
    assert wait_for(client, submit(client, project["id"])["id"])["status"] == "succeeded"


def test_a_full_queue_is_429_with_retry_after(settings: Settings, fake: FakeGenerator) -> None:
    limited = settings.model_copy(update={"queue_limit": 2})
    with TestClient(create_app(limited, fake)) as client:
        project = make_project(client)
        fake.block_at = 1
        running = submit(client, project["id"])
        assert fake.reached.wait(5)
        queued = [submit(client, project["id"]) for _ in range(2)]
        response = client.post(
            f"/api/v1/projects/{project['id']}/generations", json={"prompt": "one too many"}
        )
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert "queue is full" in response.json()["detail"]
        fake.release.set()
        for job in [running, *queued]:
            wait_for(client, job["id"])
        assert submit(client, project["id"])["status"] == "queued"  # room again
