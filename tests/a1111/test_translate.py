"""The A1111 ↔ Dali translation on its own: seeds and job splitting, sampler and scheduler names,
image fitting and masks, png-info's reading of an infotext, the --api-auth credentials."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image, PngImagePlugin

from stable_diffusion_api.a1111.hires import hires_sampling
from stable_diffusion_api.a1111.sampling import resolve_sampler, resolve_scheduler, schedulers
from stable_diffusion_api.a1111.schemas import Img2ImgRequest, Txt2ImgRequest
from stable_diffusion_api.a1111.translate import (
    Job,
    decode_base64,
    draw_seed,
    fit,
    infotext_defaults,
    png_info,
    prepare_img2img,
    split_jobs,
)
from stable_diffusion_api.auth.credentials import AuthConfigError, Credentials
from stable_diffusion_api.errors import InvalidField
from stable_diffusion_api.schemas import MAX_SEED
from stable_diffusion_api.services.generator import SamplerSpec
from stable_diffusion_api.services.samplers import SamplerCatalog


class _Engine:
    """Just the sampler list of sd_core's registry, by its A1111 names."""

    def samplers(self) -> list[SamplerSpec]:
        return [
            SamplerSpec("euler_a", "Euler a", ("k_euler_a",)),
            SamplerSpec("euler", "Euler"),
            SamplerSpec("dpmpp_2m", "DPM++ 2M"),
            SamplerSpec("dpmpp_2m_karras", "DPM++ 2M Karras"),
            SamplerSpec("ddim", "DDIM"),
        ]


@pytest.fixture
def catalog() -> SamplerCatalog:
    return SamplerCatalog(_Engine())  # type: ignore[arg-type]


def png_b64(image: Image.Image, **chunks: str) -> str:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


# -- seeds and jobs ----------------------------------------------------------------------------


def test_jobs_cut_batches_larger_than_the_queue_takes_and_keep_a1111_seeds() -> None:
    jobs = split_jobs(seed=100, subseed=None, n_iter=2, batch_size=10)
    assert jobs == [Job(100, 8), Job(108, 2), Job(110, 8), Job(118, 2)]
    seeds = [job.seed + i for job in jobs for i in range(job.batch)]
    assert seeds == list(range(100, 120))  # image i of the request has seed + i


def test_variation_seeds_follow_the_images() -> None:
    jobs = split_jobs(seed=5, subseed=50, n_iter=3, batch_size=1)
    assert [(j.seed, j.variation_seed) for j in jobs] == [(5, 50), (6, 51), (7, 52)]


def test_random_seed_leaves_room_for_every_image_and_fixed_seed_must_fit() -> None:
    for _ in range(50):
        seed = draw_seed(-1, 1000, "seed")
        assert seed >= 0 and seed + 999 <= MAX_SEED
    assert draw_seed(MAX_SEED - 3, 4, "seed") == MAX_SEED - 3
    with pytest.raises(InvalidField) as error:
        draw_seed(MAX_SEED - 2, 4, "seed")
    assert error.value.field == "seed"


# -- samplers and schedulers -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sampler_name": "Euler a"}, "euler_a"),
        ({"sampler_name": "k_euler_a", "scheduler": "automatic"}, "euler_a"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "karras"}, "dpmpp_2m_karras"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, "dpmpp_2m_karras"),
        ({"sampler_name": "DPM++ 2M Karras", "scheduler": "karras"}, "dpmpp_2m_karras"),
        ({"sampler_index": "DDIM"}, "ddim"),
        ({"sampler_name": "Euler", "sampler_index": "DDIM"}, "euler"),  # sampler_name wins
        ({}, None),  # the project's default sampler
    ],
)
def test_sampler_and_scheduler_names(
    catalog: SamplerCatalog, fields: dict[str, str], expected: str | None
) -> None:
    assert resolve_sampler(Txt2ImgRequest(prompt="x", **fields), catalog) == expected
    # A scheduler folded into a registered sampler's name is no schedule type of its own.
    assert resolve_scheduler(Txt2ImgRequest(prompt="x", **fields), catalog) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sampler_name": "Euler a", "scheduler": "karras"}, ("euler_a", "karras")),
        ({"sampler_name": "Euler", "scheduler": "SGM Uniform"}, ("euler", "sgm_uniform")),
        ({"sampler_name": "DPM++ 2M Karras", "scheduler": "exponential"},
         ("dpmpp_2m_karras", "exponential")),
        ({"scheduler": "exponential"}, (None, "exponential")),
    ],
)  # fmt: skip
def test_other_schedulers_become_schedule_types(
    catalog: SamplerCatalog, fields: dict[str, str], expected: tuple[str | None, str]
) -> None:
    request = Txt2ImgRequest(prompt="x", **fields)
    assert (resolve_sampler(request, catalog), resolve_scheduler(request, catalog)) == expected


def test_unknown_sampler_and_impossible_scheduler_name_the_field(catalog: SamplerCatalog) -> None:
    with pytest.raises(InvalidField) as error:
        resolve_sampler(Txt2ImgRequest(prompt="x", sampler_name="Euler b"), catalog)
    assert error.value.field == "sampler_name" and "Euler a" in error.value.message
    with pytest.raises(InvalidField) as error:
        resolve_sampler(Txt2ImgRequest(prompt="x", sampler_name="Euler a", scheduler="beta"),
                        catalog)  # fmt: skip
    assert error.value.field == "scheduler"
    assert "automatic, karras, exponential, sgm_uniform" in error.value.message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sampler_name": "Euler"}, {}),  # both "Use same …": nothing of its own
        ({"sampler_name": "Euler", "hr_sampler_name": "Euler a"}, {"hires_sampler": "euler_a"}),
        # A first pass on a joined name passes its Karras on to another hires sampler.
        ({"sampler_name": "DPM++ 2M Karras", "hr_sampler_name": "Euler"},
         {"hires_sampler": "euler", "hires_scheduler": "karras"}),
        ({"sampler_name": "DPM++ 2M", "scheduler": "karras", "hr_sampler_name": "Euler"},
         {"hires_sampler": "euler", "hires_scheduler": "karras"}),
        ({"sampler_name": "DPM++ 2M Karras", "hr_scheduler": "Automatic"},
         {"hires_sampler": "dpmpp_2m"}),
        ({"sampler_name": "DPM++ 2M Karras", "hr_scheduler": "exponential"},
         {"hires_sampler": "dpmpp_2m", "hires_scheduler": "exponential"}),
        ({"sampler_name": "DPM++ 2M", "hr_scheduler": "karras"},
         {"hires_sampler": "dpmpp_2m_karras"}),
        ({"sampler_name": "Euler", "scheduler": "karras", "hr_scheduler": "Use same scheduler",
          "hr_sampler_name": "Use same sampler"}, {}),
    ],
)  # fmt: skip
def test_hires_sampler_and_scheduler_follow_a1111(
    catalog: SamplerCatalog, fields: dict[str, str], expected: dict[str, str]
) -> None:
    assert hires_sampling(Txt2ImgRequest(prompt="x", **fields), catalog) == expected


def test_schedulers_are_automatic_and_the_suffixes_sampler_names_carry(
    catalog: SamplerCatalog,
) -> None:
    # "Euler a" must not make "a" a scheduler: only A1111's scheduler names count.
    assert schedulers(catalog) == ["automatic", "karras", "exponential", "sgm_uniform"]


# -- images ------------------------------------------------------------------------------------


def stripes() -> Image.Image:
    """128×64: four 32-pixel vertical stripes, red, green, blue, white."""
    image = Image.new("RGB", (128, 64))
    for i, colour in enumerate(["red", "lime", "blue", "white"]):
        image.paste(colour, (32 * i, 0, 32 * i + 32, 64))
    return image


def test_resize_modes_stretch_crop_and_fill() -> None:
    stretched = fit(stripes(), 64, 64, 0)
    assert stretched.size == (64, 64)
    assert stretched.getpixel((4, 32)) == (255, 0, 0)  # all four stripes, narrower
    assert stretched.getpixel((60, 32)) == (255, 255, 255)
    cropped = fit(stripes(), 64, 64, 1)
    assert cropped.getpixel((4, 32)) == (0, 255, 0)  # the middle two stripes only
    assert cropped.getpixel((60, 32)) == (0, 0, 255)
    # Fill: the whole image shrunk to 64×32 and centred, so its top line moves down to y=16.
    lined = Image.new("RGB", (128, 64), "black")
    lined.paste("white", (0, 0, 128, 4))
    filled = fit(lined, 64, 64, 2)
    assert filled.size == (64, 64)
    assert filled.getpixel((32, 16))[0] > 200 and filled.getpixel((32, 24))[0] < 50
    assert fit(lined, 64, 64, 0).getpixel((32, 16))[0] < 50


def test_img2img_inputs_are_fitted_and_the_mask_settings_passed_on() -> None:
    init = png_b64(stripes())
    mask = Image.new("L", (128, 64), 0)
    mask.paste(255, (0, 0, 64, 64))  # repaint the left half
    request = Img2ImgRequest(
        prompt="x", init_images=[init], mask=png_b64(mask), width=64, height=64,
        resize_mode=0, inpainting_mask_invert=1, mask_blur=0, denoising_strength=0.3,
    )  # fmt: skip
    base: dict[str, object] = {"width": 64, "height": 64}
    prepare_img2img(request, base)
    assert decode(str(base["init_image"])).size == (64, 64)
    fitted = decode(str(base["mask"]))
    assert fitted.size == (64, 64)
    # The engine inverts and blurs (sd_core/inpaint.py): the mask travels as it was drawn.
    assert fitted.getpixel((4, 32)) == 255 and fitted.getpixel((60, 32)) == 0
    assert (base["inpainting_mask_invert"], base["mask_blur"], base["strength"]) == (True, 0, 0.3)

    defaults: dict[str, object] = {"width": 64, "height": 64}
    prepare_img2img(request.model_copy(update={"mask_blur": None}), defaults)
    assert defaults["mask_blur"] == 4  # A1111's default


def test_img2img_without_size_takes_the_init_image_size_on_the_grid() -> None:
    request = Img2ImgRequest(prompt="x", init_images=[png_b64(Image.new("RGB", (100, 77)))])
    base: dict[str, object] = {"width": None, "height": None}
    prepare_img2img(request, base)
    assert (base["width"], base["height"]) == (96, 72)
    assert base["strength"] == 0.75  # A1111's default denoising strength


def test_img2img_refuses_missing_or_several_init_images() -> None:
    with pytest.raises(InvalidField) as error:
        prepare_img2img(Img2ImgRequest(prompt="x"), {})
    assert error.value.field == "init_images"
    two = png_b64(Image.new("RGB", (64, 64)))
    with pytest.raises(InvalidField):
        prepare_img2img(Img2ImgRequest(prompt="x", init_images=[two, two]), {})
    with pytest.raises(InvalidField) as error:
        prepare_img2img(Img2ImgRequest(prompt="x", init_images=["bm90IGFuIGltYWdl"]), {})
    assert error.value.field == "init_images.0"


def test_base64_accepts_data_urls_and_refuses_garbage() -> None:
    assert decode_base64("data:image/png;base64,aGVsbG8=", "image") == b"hello"
    with pytest.raises(InvalidField):
        decode_base64("not base64!", "image")
    with pytest.raises(InvalidField):
        decode_base64("", "image")


# -- png-info ----------------------------------------------------------------------------------

INFOTEXT = (
    'a castle, (dramatic lighting:1.2), "quoted"\n'
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, "
    'Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Lora hashes: "detail: 0123abcd, '
    'style: 4567ef01", Version: v1.10.1'
)


def test_png_info_reads_the_infotext_as_a1111_does() -> None:
    raw = base64.b64decode(png_b64(Image.new("RGB", (8, 8)), parameters=INFOTEXT, dali="{}"))
    result = png_info(raw)
    assert result.info == INFOTEXT
    assert result.items == {"dali": "{}"}
    params = result.parameters
    assert params["Prompt"] == 'a castle, (dramatic lighting:1.2), "quoted"'
    assert params["Negative prompt"] == "blurry, lowres"
    assert params["Steps"] == "20" and params["CFG scale"] == "7.5" and params["Seed"] == "42"
    assert params["Schedule type"] == "Karras"
    assert (params["Size-1"], params["Size-2"]) == ("512", "768")
    assert params["Lora hashes"] == "detail: 0123abcd, style: 4567ef01"  # unquoted
    assert list(params)[:4] == ["Prompt", "Negative prompt", "Steps", "Sampler"]


def test_png_info_of_an_image_without_parameters_is_empty() -> None:
    result = png_info(base64.b64decode(png_b64(Image.new("RGB", (8, 8)))))
    assert (result.info, result.items, result.parameters) == ("", {}, {})
    with pytest.raises(InvalidField):
        png_info(b"not an image at all")


def test_infotext_field_fills_what_the_request_left_out() -> None:
    request = Txt2ImgRequest(infotext=INFOTEXT, steps=5)
    filled = infotext_defaults(request)
    assert "steps" not in filled  # sent explicitly: the request wins
    assert filled["prompt"].startswith("a castle")
    assert (filled["sampler_name"], filled["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (filled["seed"], filled["width"], filled["height"]) == (42, 512, 768)
    assert filled["cfg_scale"] == 7.5


def test_an_img2img_infotext_fills_the_inpainting_settings() -> None:
    text = ("a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Mask blur: 8, "
            "Mask mode: Inpaint not masked, Masked content: latent noise, "
            "Inpaint area: Only masked, Masked area padding: 16")  # fmt: skip
    filled = infotext_defaults(Img2ImgRequest(infotext=text, inpainting_fill=3))
    assert "inpainting_fill" not in filled  # sent: the request wins
    assert (filled["mask_blur"], filled["inpainting_mask_invert"]) == ("8", 1)
    assert (filled["inpaint_full_res"], filled["inpaint_full_res_padding"]) == (True, "16")
    plain = infotext_defaults(Img2ImgRequest(infotext="a cat\nSteps: 4, Seed: 1"))
    assert (plain["inpainting_fill"], plain["inpaint_full_res"]) == (1, False)  # A1111's reading
    assert plain["inpaint_full_res_padding"] == 32 and "mask_blur" not in plain
    assert "inpainting_fill" not in infotext_defaults(Txt2ImgRequest(infotext="a cat\nSeed: 1"))


# -- requests and credentials ------------------------------------------------------------------


def test_null_means_default_and_unknown_fields_are_ignored() -> None:
    request = Txt2ImgRequest.model_validate(
        {"prompt": "x", "seed": None, "n_iter": None, "hr_upscaler": "Latent", "nonsense": 1}
    )
    assert (request.seed, request.n_iter) == (-1, 1)
    assert "nonsense" not in request.model_dump()


def test_api_auth_pairs() -> None:
    credentials = Credentials.parse(None, "alice:secret, bob:pa:ss")
    assert credentials.enabled
    assert credentials.user_ok("alice", "secret") and credentials.user_ok("bob", "pa:ss")
    assert not credentials.user_ok("alice", "wrong") and not credentials.user_ok("carol", "")
    assert not Credentials.parse(None, None).enabled
    for malformed in (" ", "alice:secret,hunter2"):
        with pytest.raises(AuthConfigError) as error:
            Credentials.parse(None, malformed)
        assert "DALI_API_AUTH" in str(error.value) and "hunter2" not in str(error.value)
    with pytest.raises(AuthConfigError, match="entry 2"):
        Credentials.parse(None, "alice:secret,hunter2")
