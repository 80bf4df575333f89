"""Uploaded images in every shape PNG/JPEG/BMP allow: the REST API and the A1111 routes take what
they can read as RGB (init image) and greyscale (mask), and refuse the rest with 422 naming the
field — a CMYK JPEG, a 16-bit or palette mask, a truncated file or an image bomb is never a 500."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.api.fakes import FakeGenerator
from tests.api.helpers import make_project, wait_for

SIZE = (72, 64)


def b64(image: Image.Image, fmt: str = "PNG", **options: object) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def cmyk_jpeg() -> str:
    return b64(Image.new("CMYK", SIZE, (0, 255, 255, 0)), "JPEG")  # red


def rgba_png() -> str:
    image = Image.new("RGBA", SIZE, (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    return b64(image)


def palette_png(transparent: bool = False) -> str:
    image = Image.new("P", SIZE, 1)
    image.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    return b64(image, transparency=0) if transparent else b64(image)


def grey16_png(value: int) -> str:
    array = np.full((SIZE[1], SIZE[0]), value, dtype=np.uint16)
    return b64(Image.fromarray(array))  # mode I;16


def one_bit_bmp() -> str:
    return b64(Image.new("1", SIZE, 1), "BMP")


def truncated_jpeg() -> str:
    buffer = io.BytesIO()
    Image.effect_noise(SIZE, 50).convert("RGB").save(buffer, "JPEG")
    return base64.b64encode(buffer.getvalue()[: len(buffer.getvalue()) // 2]).decode()


def bomb_png(side: int = 100_000) -> str:
    """A PNG header claiming `side`×`side` pixels, with one tiny compressed row: a few bytes
    that would decode to gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
           + chunk(b"IDAT", zlib.compress(b"\0" * (side + 1))) + chunk(b"IEND", b""))  # fmt: skip
    return base64.b64encode(png).decode()


RGB_INIT = b64(Image.new("RGB", SIZE, "red"))
MASK = b64(Image.new("L", SIZE, 255))

# What the fake engine must be handed for each accepted input (mode, a pixel value).
ACCEPTED_INITS: dict[str, tuple[Callable[[], str], tuple[int, ...]]] = {
    "cmyk jpeg": (cmyk_jpeg, (254, 0, 0)),
    "rgba png": (rgba_png, (255, 0, 0)),
    "palette png": (palette_png, (255, 255, 255)),
    "1-bit bmp": (one_bit_bmp, (255, 255, 255)),
}
ACCEPTED_MASKS: dict[str, tuple[Callable[[], str], int]] = {
    "cmyk jpeg": (cmyk_jpeg, 76),  # red's luminance
    "16-bit png, white": (lambda: grey16_png(65535), 255),
    "16-bit png, mid grey": (lambda: grey16_png(32896), 128),  # not clipped to white
    "palette png": (palette_png, 255),
    "palette png with transparency": (lambda: palette_png(True), 255),
}
REFUSED = {
    "1x1 image": lambda: b64(Image.new("RGB", (1, 1))),
    "truncated jpeg": truncated_jpeg,
    "image bomb": bomb_png,
    "huge sides, within PIL's own limit": lambda: bomb_png(5_000),
}


def close(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return all(abs(x - y) <= 2 for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("case", ACCEPTED_INITS)
def test_an_init_image_in_any_readable_mode_reaches_the_engine_as_rgb(
    client: TestClient, fake: FakeGenerator, case: str
) -> None:
    make, pixel = ACCEPTED_INITS[case]
    project = make_project(client)
    url = f"/api/v1/projects/{project['id']}/generations"
    response = client.post(url, json={"prompt": "a", "steps": 2, "init_image": make()})
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["id"])["status"] == "succeeded"
    init = fake.calls[-1].init_image
    assert init is not None and init.mode == "RGB" and init.size == SIZE
    assert close(init.getpixel((5, 5)), pixel), init.getpixel((5, 5))


@pytest.mark.parametrize("case", ACCEPTED_MASKS)
def test_a_mask_in_any_readable_mode_reaches_the_engine_as_greyscale(
    client: TestClient, fake: FakeGenerator, case: str
) -> None:
    make, value = ACCEPTED_MASKS[case]
    project = make_project(client)
    url = f"/api/v1/projects/{project['id']}/generations"
    body = {"prompt": "a", "steps": 2, "init_image": RGB_INIT, "mask": make()}
    response = client.post(url, json=body)
    assert response.status_code == 202, response.text
    assert wait_for(client, response.json()["id"])["status"] == "succeeded"
    mask = fake.calls[-1].mask
    assert mask is not None and mask.mode == "L"
    assert abs(mask.getpixel((5, 5)) - value) <= 2, mask.getpixel((5, 5))


@pytest.mark.parametrize("case", REFUSED)
@pytest.mark.parametrize("field", ["init_image", "mask"])
def test_unreadable_images_are_422_naming_the_field(
    client: TestClient, fake: FakeGenerator, case: str, field: str
) -> None:
    project = make_project(client)
    body = {"prompt": "a", "init_image": RGB_INIT, field: REFUSED[case]()}
    response = client.post(f"/api/v1/projects/{project['id']}/generations", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("init", "mask", "mask_value"),
    [(cmyk_jpeg, None, None), (rgba_png, None, None), (lambda: RGB_INIT, cmyk_jpeg, 76),
     (lambda: RGB_INIT, lambda: grey16_png(32896), 128), (lambda: RGB_INIT, palette_png, 255)],
)  # fmt: skip
def test_the_a1111_route_takes_the_same_images(
    client: TestClient,
    fake: FakeGenerator,
    init: Callable[[], str],
    mask: Callable[[], str] | None,
    mask_value: int | None,
) -> None:
    from tests.a1111.server_app import with_a1111

    with_a1111(client.app)  # type: ignore[arg-type]
    body = {"prompt": "a", "steps": 2, "width": 72, "height": 64, "init_images": [init()]}
    if mask is not None:
        body["mask"] = mask()
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    sent = fake.calls[-1]
    assert sent.init_image is not None and sent.init_image.mode == "RGB"
    if mask_value is not None:
        assert sent.mask is not None
        assert abs(sent.mask.getpixel((5, 5)) - mask_value) <= 2, sent.mask.getpixel((5, 5))


@pytest.mark.parametrize("case", REFUSED)
def test_the_a1111_route_refuses_the_same_images_naming_the_field(
    client: TestClient, case: str
) -> None:
    from tests.a1111.server_app import with_a1111

    with_a1111(client.app)  # type: ignore[arg-type]
    body = {"prompt": "a", "steps": 2, "init_images": [REFUSED[case]()]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-2:] == ["init_images", "0"]
