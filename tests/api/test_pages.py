"""The HTML pages, driven as a browser without JavaScript would: forms, redirects, errors."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stable_diffusion_api.config import Settings
from stable_diffusion_api.errors import NotFound
from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, submit, wait_for

HTML = {"accept": "text/html"}


def test_home_and_create_project_form(client: TestClient) -> None:
    home = client.get("/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    text = home.text
    assert "No projects yet" in text and "Fake CPU" in text and "Fake GPU" in text
    assert "built-in: shapes only" in text
    assert 'name="device" value="cpu" checked' in text  # a sensible default is chosen
    assert "cdn" not in text.lower() and "https://" not in text  # works offline

    created = client.post(
        "/projects",
        data={"name": "Form project", "device": "cuda:0", "dtype": "", "steps": "12",
              "sampler": "ddim", "width": "", "negative_prompt": ""},
        follow_redirects=False,
    )  # fmt: skip
    assert created.status_code == 303
    project_url = created.headers["location"]
    project = client.get("/api/v1/projects").json()[0]
    assert project_url == f"/projects/{project['id']}"
    assert project["device"] == "cuda:0" and project["defaults"]["steps"] == 12
    assert project["defaults"]["sampler"] == "ddim" and project["defaults"]["width"] is None
    assert "Form project" in client.get("/").text


def test_bad_form_input_is_shown_beside_its_field(client: TestClient) -> None:
    bad = client.post("/projects", data={"name": "x", "steps": "500", "device": "cpu"})
    assert bad.status_code == 422
    assert re.search(r'id="steps-error"[^>]*>[^<]*150', bad.text)
    assert 'aria-invalid="true"' in bad.text and 'value="x"' in bad.text  # input kept
    make_project(client, "Taken")
    taken = client.post("/projects", data={"name": "taken", "device": "cpu"})
    assert taken.status_code == 409 and "already exists" in taken.text


def test_generate_without_javascript_then_gallery_and_detail(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client, "Pages")
    page = client.get(f"/projects/{project['id']}")
    assert page.status_code == 200 and 'id="generate-form"' in page.text
    assert 'id="random_seed" name="random_seed" checked' in page.text

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    queued = client.post(
        f"/projects/{project['id']}/generate",
        data={"prompt": "a blue square", "steps": "3", "seed": "42", "negative_prompt": "",
              "strength": "0.5", "width": "64", "height": "64"},
        files={"init_image": ("init.png", buffer.getvalue(), "image/png")},
        follow_redirects=False,
    )  # fmt: skip
    assert queued.status_code == 303 and queued.headers["location"].startswith("/generations/")
    generation_id = int(queued.headers["location"].rsplit("/", 1)[1])
    done = wait_for(client, generation_id)
    init_image = fake.calls[-1].init_image
    assert done["seed"] == 42 and done["has_init_image"]
    assert init_image is not None and init_image.size == (64, 64)
    assert fake.calls[-1].params.strength == 0.5
    status = client.get(queued.headers["location"])
    assert status.status_code == 200 and "succeeded" in status.text

    gallery = client.get(f"/projects/{project['id']}/gallery")
    image_id = done["images"][0]["id"]
    assert f'href="/images/{image_id}"' in gallery.text

    detail = client.get(f"/images/{image_id}")
    assert detail.status_code == 200
    for expected in ("a blue square", "Seed", "42", "Use these settings", "Download PNG"):
        assert expected in detail.text
    assert 'id="timings"' in detail.text and "— engine " in detail.text
    reuse = client.get(f"/projects/{project['id']}?from_image={image_id}")
    assert ">a blue square</textarea>" in reuse.text and 'value="42"' in reuse.text
    assert 'id="random_seed" name="random_seed" >' in reuse.text  # fixed seed, not random

    bad = client.post(f"/projects/{project['id']}/generate", data={"prompt": "", "steps": "0"})
    assert bad.status_code == 422 and 'id="steps-error"' in bad.text

    deleted = client.post(f"/images/{image_id}/delete", follow_redirects=False)
    assert deleted.status_code == 303
    assert client.get(f"/api/v1/images/{image_id}").status_code == 404


def test_edit_and_delete_project_pages(client: TestClient) -> None:
    project = make_project(client, "Editable")
    wait_for(client, submit(client, project["id"])["id"])
    edit = client.get(f"/projects/{project['id']}/edit")
    assert edit.status_code == 200 and 'value="Editable"' in edit.text
    saved = client.post(
        f"/projects/{project['id']}/edit",
        data={"name": "Edited", "device": "cpu", "dtype": "bfloat16", "steps": "30"},
        follow_redirects=False,
    )
    assert saved.status_code == 303
    body = client.get(f"/api/v1/projects/{project['id']}").json()
    assert body["name"] == "Edited" and body["dtype"] == "bfloat16"
    assert body["defaults"]["steps"] == 30

    refused = client.post(f"/projects/{project['id']}/delete", data={})
    assert refused.status_code == 409 and "confirm" in refused.text
    gone = client.post(
        f"/projects/{project['id']}/delete", data={"confirm": "on"}, follow_redirects=False
    )
    assert gone.status_code == 303 and gone.headers["location"] == "/"
    assert client.get(f"/api/v1/projects/{project['id']}").status_code == 404


def test_errors_are_html_for_pages_and_json_for_the_api(client: TestClient) -> None:
    page = client.get("/projects/999", headers=HTML)
    assert page.status_code == 404 and "<h1>" in page.text and "not found" in page.text
    assert client.get("/nowhere", headers=HTML).status_code == 404
    api = client.get("/api/v1/projects/999", headers=HTML)
    assert api.status_code == 404 and api.json() == {"detail": "project 999 not found"}


def test_hardware_page_and_benchmark_form(client: TestClient) -> None:
    page = client.get("/hardware")
    assert (
        page.status_code == 200 and "Fake GPU" in page.text and "Nothing measured yet" in page.text
    )
    queued = client.post("/hardware/benchmark", data={"device": "cpu"}, follow_redirects=False)
    assert queued.status_code == 303
    node = client.app.state.studio.hardware.node_name  # type: ignore[attr-defined]
    assert client.get("/api/v1/hardware/benchmarks").json()[0]["device"] == f"{node}/cpu"


def test_static_files_are_served(client: TestClient) -> None:
    for name, kind in (
        ("style.css", "text/css"),
        ("dali.js", "javascript"),
        ("favicon.svg", "svg"),
    ):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]


def test_use_these_settings_remakes_one_image_of_a_batch(client: TestClient) -> None:
    project = make_project(client, "Remake")
    job = submit(client, project["id"], seed=7, batch=2, sampler="ddim", steps=5, guidance=4.5,
                 clip_skip=2)  # fmt: skip
    second = wait_for(client, job["id"])["images"][1]
    studio = client.app.state.studio  # type: ignore[attr-defined]
    assert studio.gallery.settings_of(second["id"]) == {
        "prompt": "a red circle on a blue background", "negative_prompt": "",
        "sampler": "ddim", "steps": 5, "guidance": 4.5, "model": "dali-tiny",
        "seed": second["seed"], "width": second["width"], "height": second["height"],
        "clip_skip": 2, "vae": "None",
    }  # fmt: skip
    page = client.get(f"/projects/{project['id']}?from_image={second['id']}").text
    assert second["seed"] == 8  # image i of a batch has seed + i: the page remakes this one
    assert re.search(r'id="seed"[^>]*value="8"', page)
    assert re.search(r'id="steps"[^>]*value="5"', page)
    assert re.search(r'id="clip_skip"[^>]*value="2"', page)
    assert re.search(r'id="batch"[^>]*value="1"', page)
    assert 'id="random_seed" name="random_seed" >' in page

    client.delete(f"/api/v1/images/{second['id']}")
    with pytest.raises(NotFound):
        studio.gallery.settings_of(second["id"])
    stale = client.get(f"/projects/{project['id']}?from_image={second['id']}")
    assert stale.status_code == 200  # a stale link starts from the project's defaults
    assert 'id="random_seed" name="random_seed" checked' in stale.text


def test_the_generation_page_shows_the_engine_warnings(
    client: TestClient, fake: FakeGenerator
) -> None:
    project = make_project(client, "Warned")
    fake.warnings = ("<lora:detail:0.8> was removed from the prompt",)
    warned = wait_for(client, submit(client, project["id"], prompt="a red circle")["id"])
    assert warned["warnings"] == list(fake.warnings)
    page = client.get(f"/generations/{warned['id']}")
    assert "Note: &lt;lora:detail:0.8&gt; was removed from the prompt" in page.text
    fake.warnings = ()
    plain = wait_for(client, submit(client, project["id"], prompt="a red circle")["id"])
    assert 'class="notice"' not in client.get(f"/generations/{plain['id']}").text


def test_clip_skip_from_the_generate_form_and_the_project_default(
    client: TestClient, fake: FakeGenerator
) -> None:
    created = client.post(
        "/projects",
        data={"name": "Skips", "device": "cpu", "clip_skip": "2"},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    project_id = int(created.headers["location"].rsplit("/", 1)[1])
    page = client.get(f"/projects/{project_id}")
    assert 'id="clip_skip"' in page.text
    post = client.post(f"/projects/{project_id}/generate", data={"prompt": "x", "steps": "2"},
                       follow_redirects=False)  # fmt: skip
    wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    assert fake.calls[-1].params.clip_skip == 2  # the project's default
    post = client.post(f"/projects/{project_id}/generate",
                       data={"prompt": "x", "steps": "2", "clip_skip": "3"}, follow_redirects=False)  # fmt: skip
    wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))
    assert fake.calls[-1].params.clip_skip == 3
    bad = client.post(f"/projects/{project_id}/generate", data={"prompt": "x", "clip_skip": "13"})
    assert bad.status_code == 422 and 'id="clip_skip-error"' in bad.text


# -- VAE, LoRAs and embeddings ------------------------------------------------------------------


def install(settings: Settings, *, loras: tuple[str, ...] = (), embeddings: tuple[str, ...] = (),
            vaes: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Files in the asset folders; listing reads names only, so their bytes don't matter."""
    folders = settings.asset_folders
    for folder, names in ((folders.loras, loras), (folders.embeddings, embeddings),
                          (folders.vaes, vaes)):  # fmt: skip
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"not read")


def vae_options(page: str) -> list[tuple[str, str]]:
    """The VAE select's options: (value, "selected" or "")."""
    select = page.split('<select id="vae"')[1].split("</select>")[0]
    return re.findall(r'<option value="([^"]*)"\s*(selected)?\s*>', select)


def test_empty_asset_folders_say_where_files_go(client: TestClient, settings: Settings) -> None:
    project = make_project(client, "Bare")
    page = client.get(f"/projects/{project['id']}").text
    folders = settings.asset_folders
    assert re.search(r'<select id="vae" name="vae" aria-describedby="vae-hint">\s*'
                     r'<option value="None" selected>Model\'s own</option>\s*</select>', page)  # fmt: skip
    for folder in (folders.vaes, folders.loras, folders.embeddings):
        assert f'<code class="path">{folder}</code>' in page
    networks = page[page.index('<details class="networks"') : page.index("</details>")]
    assert "No LoRAs yet" in networks and "No embeddings yet" in networks
    assert 'class="chip"' not in networks
    edit = client.get(f"/projects/{project['id']}/edit").text
    assert 'id="vae"' in edit and f'<code class="path">{folders.vaes}</code>' in edit


def test_pickers_list_the_installed_files(client: TestClient, settings: Settings) -> None:
    install(settings, loras=("add_detail.safetensors", "style/ink.pt"),
            embeddings=("easynegative.safetensors",),
            vaes=("mse.vae.safetensors", "kl-f8.pt", "notes.txt"))  # fmt: skip
    project = make_project(client, "Assets", defaults={"vae": "mse.vae.safetensors"})
    page = client.get(f"/projects/{project['id']}").text
    installed = [("kl-f8.pt", ""), ("mse.vae.safetensors", "selected")]  # the project's
    assert vae_options(page) == [("None", ""), *installed]
    assert "No LoRAs yet" not in page and "notes.txt" not in page
    networks = page[page.index('<details class="networks"') : page.index("</details>")]
    chips = re.findall(r'data-insert="([^"]*)"', networks)
    assert chips == ["&lt;lora:add_detail:1&gt;", "&lt;lora:ink:1&gt;", "easynegative"]
    assert 'LoRAs &amp; embeddings <span class="muted">(2 + 1)</span>' in page

    edit = client.get(f"/projects/{project['id']}/edit").text
    assert ("mse.vae.safetensors", "selected") in vae_options(edit)


def test_a_vae_from_the_forms_reaches_the_job(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    install(settings, vaes=("mse.vae.safetensors",))
    created = client.post("/projects", data={"name": "Vae", "device": "cpu",
                                             "vae": "mse.vae.safetensors"},
                          follow_redirects=False)  # fmt: skip
    assert created.status_code == 303, created.text
    project_id = int(created.headers["location"].rsplit("/", 1)[1])

    def generate(**fields: str) -> dict[str, object]:
        post = client.post(f"/projects/{project_id}/generate",
                           data={"prompt": "a red circle <lora:add_detail:1>", "steps": "2",
                                 **fields}, follow_redirects=False)  # fmt: skip
        assert post.status_code == 303, post.text
        return wait_for(client, int(post.headers["location"].rsplit("/", 1)[1]))

    done = generate()  # no vae field: the project's default
    assert fake.calls[-1].params.vae == "mse.vae.safetensors" == done["vae"]
    page = client.get(f"/generations/{done['id']}").text
    assert '<span id="vae">VAE: mse.vae.safetensors</span>' in page
    assert "a red circle &lt;lora:add_detail:1&gt;" in page
    done = generate(vae="None", clip_skip="2")  # the model's own, over the project's default
    assert fake.calls[-1].params.vae is None and done["vae"] is None
    page = client.get(f"/generations/{done['id']}").text
    assert '<span id="vae">VAE: model&#39;s own</span> · Clip skip 2' in page
    image = client.get(f"/images/{done['images'][0]['id']}").text
    assert "<dt>VAE</dt><dd>Model&#39;s own</dd>" in image

    saved = client.post(f"/projects/{project_id}/edit",
                        data={"name": "Vae", "device": "cpu", "vae": "None"},
                        follow_redirects=False)  # fmt: skip
    assert saved.status_code == 303
    assert client.get(f"/api/v1/projects/{project_id}").json()["defaults"]["vae"] is None


def test_a_bad_vae_re_renders_the_form_with_the_error_beside_it(
    client: TestClient, settings: Settings, fake: FakeGenerator
) -> None:
    install(settings, vaes=("mse.vae.safetensors",))
    project = make_project(client, "Typo")
    sent = {"prompt": "a cat, <lora:ink:0.5>", "negative_prompt": "blurry", "steps": "7",
            "vae": "mse.vae.safetensor", "seed": "5"}  # fmt: skip
    bad = client.post(f"/projects/{project['id']}/generate", data=sent)
    assert bad.status_code == 422 and fake.calls == []
    assert re.search(r'id="vae-error"[^>]*>[^<]*mse\.vae\.safetensor&#39;[^<]*mse\.vae\.safetensors',
                     bad.text)  # fmt: skip
    invalid = '<select id="vae" name="vae" aria-invalid="true" aria-describedby="vae-error">'
    assert invalid in bad.text
    # Nothing lost: the text sent, and the bad name still chosen (marked), to be corrected.
    assert ">a cat, &lt;lora:ink:0.5&gt;</textarea>" in bad.text
    assert ">blurry</textarea>" in bad.text and re.search(r'id="steps"[^>]*value="7"', bad.text)
    assert ("mse.vae.safetensor", "selected") in vae_options(bad.text)
    assert "mse.vae.safetensor — not installed" in bad.text

    edit = client.post(f"/projects/{project['id']}/edit",
                       data={"name": "Typo", "device": "cpu", "vae": "gone.pt", "steps": "9"})  # fmt: skip
    assert edit.status_code == 422 and 'id="vae-error"' in edit.text
    assert re.search(r'id="steps"[^>]*value="9"', edit.text)
    assert client.get(f"/api/v1/projects/{project['id']}").json()["defaults"]["vae"] is None
