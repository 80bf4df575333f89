"""PNG metadata: the `parameters` and `dali` chunks, read back with PIL, and atomic writes."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sd_core import pngmeta
from sd_core.infotext import GenerationParameters, format_infotext, parse_infotext
from sd_core.pngmeta import png_text_chunks, read_png_metadata, save_png

INFOTEXT = (
    "a photo of an astronaut riding a horse on mars, (detailed:1.2), <lora:x:0.8>\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x48, Model hash: 6ce0161689, "
    'Model: v1-5-pruned-emaonly, Lora hashes: "x: 0123456789ab", Version: v1.10.1'
)
NON_LATIN1 = (
    "桜の木の下に立つ少女 🌸, kimono\n"
    "Negative prompt: 低品質\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x48"
)
DALI = {
    "prompt": "a photo of an astronaut",
    "seed": 1,
    "sampler_name": "euler_a",
    "device": "cpu",
    "dtype": "float32",
    "project": "Café ☕",
}


def image() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 30, 90))


def chunk_types(data: bytes) -> dict[str, str]:
    """Keyword -> chunk type (tEXt/zTXt/iTXt) of every text chunk, read from the raw PNG bytes,
    independently of PIL's reader."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found: dict[str, str] = {}
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8].decode("ascii")
        body = data[offset + 8 : offset + 8 + length]
        assert (
            zlib.crc32(data[offset + 4 : offset + 8 + length])
            == struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])[0]
        )
        if kind in ("tEXt", "zTXt", "iTXt"):
            found[body.split(b"\0", 1)[0].decode("latin-1")] = kind
        offset += 12 + length
    return found


def test_chunks_are_written_and_read_back_by_pil(tmp_path: Path) -> None:
    path = save_png(image(), tmp_path / "out.png", parameters=INFOTEXT, dali=DALI)

    assert path == tmp_path / "out.png"
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        assert reopened.size == (64, 48)
        assert reopened.getpixel((3, 3)) == (200, 30, 90)
        chunks = png_text_chunks(reopened)
        # What A1111's own reader (image.info) sees.
        assert reopened.info["parameters"] == INFOTEXT
    assert chunks["parameters"] == INFOTEXT
    assert json.loads(chunks["dali"]) == DALI
    assert set(chunks) == {"parameters", "dali"}
    assert chunk_types(path.read_bytes()) == {"parameters": "tEXt", "dali": "tEXt"}


def test_non_latin1_infotext_goes_in_an_itxt_chunk_and_survives(tmp_path: Path) -> None:
    path = save_png(image(), tmp_path / "jp.png", parameters=NON_LATIN1, dali=DALI)

    # As A1111 does through PIL's add_text: iTXt when latin-1 cannot hold the text. The dali JSON
    # is ASCII-escaped, so it stays tEXt even with "Café ☕" in it.
    assert chunk_types(path.read_bytes()) == {"parameters": "iTXt", "dali": "tEXt"}
    parameters, dali = read_png_metadata(path)
    assert parameters is not None
    assert parameters.prompt == "桜の木の下に立つ少女 🌸, kimono"
    assert parameters.negative_prompt == "低品質"
    assert format_infotext(parameters) == NON_LATIN1
    assert dali == DALI


def test_latin1_accents_stay_in_a_text_chunk(tmp_path: Path) -> None:
    text = "Café terrace, naïve art\nSteps: 20, Sampler: Heun, CFG scale: 7, Seed: 1000"
    path = save_png(image(), tmp_path / "fr.png", parameters=text)
    assert chunk_types(path.read_bytes()) == {"parameters": "tEXt"}
    with Image.open(path) as reopened:
        assert png_text_chunks(reopened) == {"parameters": text}


def test_generation_parameters_are_formatted(tmp_path: Path) -> None:
    params = parse_infotext(INFOTEXT)
    path = save_png(image(), tmp_path / "p.png", parameters=params)
    with Image.open(path) as reopened:
        assert png_text_chunks(reopened)["parameters"] == INFOTEXT


def test_defaults_come_from_image_info_so_a_reopened_png_can_be_saved_again(
    tmp_path: Path,
) -> None:
    first = save_png(image(), tmp_path / "a.png", parameters=NON_LATIN1, dali=DALI)
    with Image.open(first) as reopened:
        reopened.load()
        second = save_png(reopened, tmp_path / "copy" / "b.png")
    assert read_png_metadata(second) == (parse_infotext(NON_LATIN1), DALI)

    # Explicit arguments win over image.info.
    with Image.open(first) as reopened:
        third = save_png(reopened, tmp_path / "c.png", parameters=INFOTEXT, dali={"seed": 2})
    assert read_png_metadata(third) == (parse_infotext(INFOTEXT), {"seed": 2})


def test_no_metadata_no_chunks(tmp_path: Path) -> None:
    path = save_png(image(), tmp_path / "plain.png")
    assert chunk_types(path.read_bytes()) == {}
    assert read_png_metadata(path) == (None, None)


def test_further_text_chunks_are_written_as_given(tmp_path: Path) -> None:
    """A1111's upscaled images carry `postprocessing` and `extras` beside the source's
    `parameters`; a non-latin-1 value goes in an iTXt chunk like the infotext."""
    info = "Postprocess upscale by: 2, Postprocess upscaler: 4x-Ünïcode 🌸"
    path = save_png(
        image(),
        tmp_path / "up.png",
        parameters=INFOTEXT,
        text={"postprocessing": info, "extras": "plain"},
    )
    with Image.open(path) as reopened:
        assert png_text_chunks(reopened) == {
            "parameters": INFOTEXT,
            "postprocessing": info,
            "extras": "plain",
        }
    kinds = chunk_types(path.read_bytes())
    assert kinds == {"parameters": "tEXt", "postprocessing": "iTXt", "extras": "tEXt"}


@pytest.mark.parametrize("name", ["parameters", "dali"])
def test_further_text_may_not_name_the_two_own_chunks(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}="):
        save_png(image(), tmp_path / "x.png", text={name: "{}"})
    assert list(tmp_path.iterdir()) == []


def test_read_png_metadata_takes_a_path_bytes_or_a_file(tmp_path: Path) -> None:
    path = save_png(image(), tmp_path / "x.png", parameters=INFOTEXT, dali=DALI)
    expected = (parse_infotext(INFOTEXT), DALI)
    assert read_png_metadata(str(path)) == expected
    assert read_png_metadata(path.read_bytes()) == expected
    with path.open("rb") as file:
        assert read_png_metadata(file) == expected
    params, _ = read_png_metadata(path)
    assert params is not None and (params.width, params.height, params.seed) == (64, 48, 1)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_text_after_the_image_data_is_found(tmp_path: Path) -> None:
    # Some writers put their text chunks after IDAT, where image.info does not look until the
    # pixels are loaded. PIL writes text before IDAT, so splice one in before IEND by hand.
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT, zip=True)  # a zTXt chunk, as some tools write
    buffer = io.BytesIO()
    image().save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    iend = data.rindex(b"IEND") - 4
    path = tmp_path / "late.png"
    path.write_bytes(data[:iend] + png_chunk(b"tEXt", b"late\0after the pixels") + data[iend:])
    assert chunk_types(path.read_bytes()) == {"parameters": "zTXt", "late": "tEXt"}

    with Image.open(path) as reopened:
        assert "late" not in reopened.info
        assert png_text_chunks(reopened) == {"parameters": INFOTEXT, "late": "after the pixels"}


def test_creates_parent_folders_and_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "img.png"
    save_png(image(), target, parameters=INFOTEXT)
    save_png(Image.new("RGB", (8, 8)), target, parameters="second")
    with Image.open(target) as reopened:
        assert reopened.size == (8, 8)
        assert png_text_chunks(reopened) == {"parameters": "second"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["img.png"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_no_temporary_file_and_no_half_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    save_png(image(), target, parameters="old")
    old_bytes = target.read_bytes()

    real_save = Image.Image.save

    def save_half_then_fail(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        buffer = io.BytesIO()
        real_save(self, buffer, *args, **kwargs)
        fp.write(buffer.getvalue()[:40])  # half an image reaches the disk...
        raise OSError("disk full")  # ...then the write fails

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_png(image(), target, parameters="new")
    with pytest.raises(OSError, match="disk full"):
        save_png(image(), tmp_path / "new.png", parameters="new")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    assert target.read_bytes() == old_bytes


def test_a_failed_rename_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError("rename refused")

    monkeypatch.setattr(pngmeta.os, "replace", refuse)
    with pytest.raises(PermissionError):
        save_png(image(), tmp_path / "out.png", parameters=INFOTEXT)
    assert list(tmp_path.iterdir()) == []


def test_an_image_png_cannot_hold_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        save_png(Image.new("CMYK", (4, 4)), tmp_path / "cmyk.png", parameters=INFOTEXT)
    assert list(tmp_path.iterdir()) == []


def test_temporary_file_is_in_the_target_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(source: str, target: str) -> None:
        seen.append((str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(pngmeta.os, "replace", spy)
    save_png(image(), tmp_path / "out.png")
    [(source, target)] = seen
    assert Path(source).parent == tmp_path and Path(source).name.startswith(".out.png.")
    assert Path(target) == tmp_path / "out.png"


# --- errors --------------------------------------------------------------------------------------


def test_path_must_be_png(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png"):
        save_png(image(), tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("dali", "message"),
    [
        ([1, 2], "dict"),
        ({"value": float("nan")}, "JSON values"),
        ({"dtype": object()}, "JSON values"),
        ("not json", "JSON object"),
    ],
)
def test_dali_must_be_a_json_object(tmp_path: Path, dali: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        save_png(image(), tmp_path / "out.png", dali=dali)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("chunk", ["{not json", "[1, 2]", '"a string"'])
def test_a_dali_chunk_that_is_no_json_object_reads_as_none(tmp_path: Path, chunk: str) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT)
    info.add_text("dali", chunk)
    path = tmp_path / "damaged.png"
    image().save(path, pnginfo=info)
    parameters, dali = read_png_metadata(path)
    assert parameters == parse_infotext(INFOTEXT) and dali is None


def test_non_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.jpg"
    image().save(path, format="JPEG")
    with pytest.raises(ValueError, match="PNG"):
        read_png_metadata(path)
    with Image.open(path) as opened, pytest.raises(ValueError, match="JPEG"):
        png_text_chunks(opened)
    with pytest.raises(ValueError, match="PNG opened with PIL.Image.open"):
        png_text_chunks(image())


# --- an independent reader -----------------------------------------------------------------------


def test_sd_parsers_recognises_our_png_as_automatic1111(tmp_path: Path) -> None:
    sd_parsers = pytest.importorskip("sd_parsers")
    path = save_png(image(), tmp_path / "a1111.png", parameters=NON_LATIN1, dali=DALI)
    info = sd_parsers.ParserManager().parse(str(path))
    assert info is not None
    assert info.generator.name == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert sampler.name == "Euler a"
    assert sampler.parameters["seed"] == "1"
    assert [p.value for p in sampler.prompts] == ["桜の木の下に立つ少女 🌸, kimono"]
    assert [p.value for p in sampler.negative_prompts] == ["低品質"]


def test_generation_parameters_type_is_what_read_returns(tmp_path: Path) -> None:
    path = save_png(image(), tmp_path / "t.png", parameters=GenerationParameters(prompt="x"))
    parameters, dali = read_png_metadata(path)
    assert isinstance(parameters, GenerationParameters) and parameters.prompt == "x"
    assert dali is None
