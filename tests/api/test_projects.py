"""Projects over HTTP: create, list, read, update, delete; every refusal names its field."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.helpers import make_project, submit, wait_for


def field_errors(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    return {".".join(str(p) for p in e["loc"][1:]): e["msg"] for e in response.json()["detail"]}


def test_create_read_list_update(client: TestClient) -> None:
    created = make_project(
        client,
        "Shapes",
        description="circles",
        device="cpu",
        dtype="bfloat16",
        defaults={"steps": 12, "sampler": "Euler a", "width": 128, "height": 64},
    )
    assert created["device"] == "cpu" and created["dtype"] == "bfloat16"
    assert created["defaults"]["sampler"] == "euler_a"  # A1111 label stored as canonical name
    assert created["default_model"] is None and created["image_count"] == 0

    read = client.get(f"/api/v1/projects/{created['id']}").json()
    assert read == created
    assert [p["name"] for p in client.get("/api/v1/projects").json()] == ["Shapes"]

    patched = client.patch(
        f"/api/v1/projects/{created['id']}",
        json={"name": "Squares", "device": "cuda", "default_model": "dali-tiny"},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    # "cuda" stays as asked: any CUDA device of any live node (services/nodes.py).
    assert body["name"] == "Squares" and body["device"] == "cuda"
    assert body["dtype"] is None  # a new device without a dtype starts from its default
    assert body["default_model"] == "dali-tiny"
    assert body["defaults"]["steps"] == 12  # untouched fields stay


def test_duplicate_name_is_409_case_insensitive(client: TestClient) -> None:
    make_project(client, "Shapes")
    response = client.post("/api/v1/projects", json={"name": "  shapes "})
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    other = make_project(client, "Other")
    renamed = client.patch(f"/api/v1/projects/{other['id']}", json={"name": "SHAPES"})
    assert renamed.status_code == 409


def test_hardware_that_is_not_present_is_422_listing_what_is(client: TestClient) -> None:
    errors = field_errors(client.post("/api/v1/projects", json={"name": "x", "device": "cuda:3"}))
    assert "cpu (Fake CPU)" in errors["device"] and "cuda:0 (Fake GPU)" in errors["device"]
    errors = field_errors(
        client.post("/api/v1/projects", json={"name": "x", "device": "cpu", "dtype": "float16"})
    )
    assert "float32, bfloat16" in errors["dtype"]


def test_bad_fields_are_422_naming_the_field(client: TestClient) -> None:
    cases = {
        "name": {"name": ""},
        "defaults.steps": {"name": "a", "defaults": {"steps": 151}},
        "defaults.width": {"name": "a", "defaults": {"width": 100}},
        "defaults.guidance": {"name": "a", "defaults": {"guidance": 31}},
        "default_model": {"name": "a", "default_model": "nope"},
        "defaults.sampler": {"name": "a", "defaults": {"sampler": "warp drive"}},
        "colour": {"name": "a", "colour": "red"},
    }
    for field, body in cases.items():
        errors = field_errors(client.post("/api/v1/projects", json=body))
        assert field in errors, (field, errors)
    assert (
        "Euler a"
        in field_errors(
            client.post("/api/v1/projects", json={"name": "a", "defaults": {"sampler": "x"}})
        )["defaults.sampler"]
    )
    assert (
        "dali-tiny"
        in field_errors(client.post("/api/v1/projects", json={"name": "a", "default_model": "x"}))[
            "default_model"
        ]
    )
    assert client.get("/api/v1/projects").json() == []


def test_unknown_ids_are_404(client: TestClient) -> None:
    assert client.get("/api/v1/projects/999").status_code == 404
    assert client.patch("/api/v1/projects/999", json={"name": "x"}).status_code == 404
    assert client.delete("/api/v1/projects/999").status_code == 404
    assert client.get("/api/v1/projects/0").status_code == 422
    assert client.get(f"/api/v1/projects/{2**70}").status_code == 422
    assert client.get("/api/v1/projects/abc").status_code == 422


def test_delete_needs_confirmation_when_it_holds_images(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    project = make_project(client)
    job = submit(client, project["id"])
    done = wait_for(client, job["id"])
    png = settings.resolved_data_dir / "images" / str(project["id"])
    assert any(png.rglob("*.png"))

    refused = client.delete(f"/api/v1/projects/{project['id']}")
    assert refused.status_code == 409 and "1 images" in refused.json()["detail"]
    assert client.get(f"/api/v1/images/{done['images'][0]['id']}").status_code == 200

    assert client.delete(f"/api/v1/projects/{project['id']}?confirm=true").status_code == 204
    assert client.get(f"/api/v1/projects/{project['id']}").status_code == 404
    assert client.get(f"/api/v1/generations/{job['id']}").status_code == 404
    assert client.get(f"/api/v1/images/{done['images'][0]['id']}").status_code == 404
    assert not png.exists()

    empty = make_project(client, "Empty")
    assert client.delete(f"/api/v1/projects/{empty['id']}").status_code == 204
