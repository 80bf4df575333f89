"""routes/forms.py on its own: browser form fields → the REST schemas, bad values → field errors."""

from __future__ import annotations

import base64
import io

import pytest
from starlette.datastructures import FormData, Headers, UploadFile

from stable_diffusion_api.errors import Conflict, InvalidField
from stable_diffusion_api.routes import forms
from stable_diffusion_api.routes.forms import FieldError, FormInvalid, field_errors
from stable_diffusion_api.schemas import GenerationCreate, GenerationDefaults


def form(**fields: str | UploadFile) -> FormData:
    return FormData(list(fields.items()))


def upload(data: bytes, filename: str = "in.png") -> UploadFile:
    return UploadFile(io.BytesIO(data), filename=filename, headers=Headers({}))


def invalid(exc: pytest.ExceptionInfo[FormInvalid], field: str) -> FieldError:
    found = [error for error in exc.value.errors if error.field == field]
    assert found, f"no error about {field!r} in {exc.value.errors}"
    return found[0]


# -- projects ---------------------------------------------------------------------------------


def test_project_form_becomes_project_create() -> None:
    sent = form(name="Shapes", description="d", device="", dtype="", low_memory="on",
                default_model="", steps="12", guidance="6.5", width="", sampler="ddim",
                negative_prompt="")  # fmt: skip
    data = forms.project_create(sent)
    assert (data.name, data.description, data.device) == ("Shapes", "d", "cpu")  # "" → default
    assert data.dtype is None and data.default_model is None and data.low_memory is True
    assert data.defaults.steps == 12 and data.defaults.guidance == 6.5
    assert data.defaults.sampler == "ddim" and data.defaults.width is None
    assert forms.project_create(form(name="x")).low_memory is False  # an unticked box


def test_a_bad_project_value_is_an_error_naming_the_field_and_the_value() -> None:
    with pytest.raises(FormInvalid) as exc:
        forms.project_create(form(name="x", steps="500", guidance="lots"))
    steps = invalid(exc, "steps")
    assert steps.value == "500" and "150" in steps.message  # the limit, beside the field
    guidance = invalid(exc, "guidance")
    assert guidance.value == "lots" and "number" in guidance.message
    assert "steps='500'" in str(exc.value) and "guidance='lots'" in str(exc.value)
    assert set(field_errors(exc.value)) == {"steps", "guidance"}

    with pytest.raises(FormInvalid) as exc:
        forms.project_create(form(name="   ", width="100"))
    assert invalid(exc, "name").value == "   "
    assert invalid(exc, "width").value == "100" and "multiple" in invalid(exc, "width").message


def test_project_edit_form_becomes_project_update() -> None:
    data = forms.project_update(form(name="Edited", device="cuda:0", dtype="bfloat16", steps="30"))
    assert (data.name, data.device, data.dtype) == ("Edited", "cuda:0", "bfloat16")
    # Every default is sent by the edit form: one left empty goes back to its default.
    assert data.defaults == GenerationDefaults(steps=30)
    with pytest.raises(FormInvalid) as exc:
        forms.project_update(form(name="Edited", height="99999"))
    assert invalid(exc, "height").value == "99999"


# -- generations ------------------------------------------------------------------------------


def test_generate_form_becomes_generation_create() -> None:
    png = b"\x89PNG not really"
    sent = form(prompt="a red circle", negative_prompt="", steps="", seed="42", batch="2",
                width="64", strength="0.5", init_image=upload(png), mask=upload(b"", ""))  # fmt: skip
    request = forms.generation_create(sent)
    assert request.prompt == "a red circle" and request.negative_prompt == ""
    assert request.steps is None and request.seed == 42 and request.batch == 2
    assert request.width == 64 and request.strength == 0.5
    assert request.init_image is not None and base64.b64decode(request.init_image) == png
    assert request.mask is None  # no file chosen
    random = forms.generation_create(form(prompt="p", seed="42", random_seed="on"))
    assert random.seed is None  # the box wins over a seed left in the field


def test_generate_form_carries_the_inpainting_settings() -> None:
    plain = forms.generation_create(form(prompt="p"))
    assert (plain.mask_blur, plain.inpainting_fill, plain.inpaint_full_res) == (0, 1, False)
    sent = form(prompt="p", mask_blur="4", inpainting_fill="0", inpaint_full_res="on",
                inpaint_full_res_padding="32", inpainting_mask_invert="on")  # fmt: skip
    request = forms.generation_create(sent)
    assert (request.mask_blur, request.inpainting_fill, request.inpaint_full_res_padding) == (
        4, 0, 32,
    )  # fmt: skip
    assert request.inpaint_full_res and request.inpainting_mask_invert
    with pytest.raises(FormInvalid) as exc:
        forms.generation_create(form(prompt="p", mask_blur="65"))
    assert invalid(exc, "mask_blur").value == "65"


def test_a_bad_generation_value_is_an_error_naming_the_field_and_the_value() -> None:
    with pytest.raises(FormInvalid) as exc:
        forms.generation_create(form(prompt="", seed="abc", strength="2", batch="9"))
    assert invalid(exc, "prompt").value == ""
    assert invalid(exc, "seed").value == "abc"
    strength = invalid(exc, "strength")
    assert strength.value == "2" and "1" in strength.message
    assert invalid(exc, "batch").value == "9"
    errors = field_errors(exc.value)
    assert set(errors) == {"prompt", "seed", "strength", "batch"}
    assert errors["strength"] == strength.message


def test_an_upload_error_names_the_file_not_its_bytes() -> None:
    sent = form(prompt="p", init_image=upload(b"png bytes", "cat.png"))
    with pytest.raises(FormInvalid) as exc:
        forms.validate(GenerationCreate, {"prompt": "p", "init_image": 5}, sent)
    assert invalid(exc, "init_image").value == "cat.png"


def test_generation_values_keep_the_text_sent_and_the_seed_box() -> None:
    values = forms.generation_values(
        form(prompt="a cat", steps="0", init_image=upload(b"png"), random_seed="on")
    )
    # Checkboxes are always there: ticked or not (random seed, hires fix); the styles picked.
    assert values == {
        "prompt": "a cat", "steps": "0", "random_seed": True, "hires": False, "styles": [],
    }  # fmt: skip
    assert forms.generation_values(form(prompt="a cat"))["random_seed"] is False
    # A multiple select sends its name once per pick: all of them, in order.
    picks = FormData([("prompt", "p"), ("styles", "b"), ("styles", ""), ("styles", "a")])
    assert forms.generation_values(picks)["styles"] == ["b", "a"]
    assert forms.generation_create(picks).styles == ["b", "a"]


# -- errors from the services -----------------------------------------------------------------


def test_service_errors_go_beside_their_field() -> None:
    unknown = InvalidField("defaults.sampler", "nope", "samplers: ddim, euler")
    assert field_errors(unknown) == {"sampler": unknown.message}
    taken = Conflict("a project named 'x' already exists; choose another name")
    assert field_errors(taken) == {"name": taken.message}
    style = InvalidField("styles.1", "gone", "installed styles: oil")
    assert field_errors(style) == {"styles": style.message}  # the list's field, not "1"
    twice = FormInvalid([FieldError("steps", "0", "first"), FieldError("steps", "0", "second")])
    assert field_errors(twice) == {"steps": "first"}  # one message per field: the first


def test_the_vae_select_is_sent_as_is_and_empty_leaves_the_default() -> None:
    assert forms.generation_create(form(prompt="p", vae="None")).vae == "None"  # model's own
    assert forms.generation_create(form(prompt="p", vae="mse.vae.pt")).vae == "mse.vae.pt"
    assert forms.generation_create(form(prompt="p", vae="")).vae is None  # the project's
    assert forms.project_create(form(name="x", vae="mse.vae.pt")).defaults.vae == "mse.vae.pt"
    assert forms.project_update(form(name="x")).defaults.vae is None
    unknown = InvalidField("defaults.vae", "gone.pt", "installed: mse.vae.pt")
    assert field_errors(unknown) == {"vae": unknown.message}
