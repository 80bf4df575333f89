"""`<lora:…>` tags read as AUTOMATIC1111 reads them, and the files they name found by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from sd_core.extra_networks import listed, lora_multipliers, prompt_networks
from sd_core.file_library import FileLibrary, file_name


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), (1.0, 1.0)),
        (("0.8",), (0.8, 0.8)),
        (("0.8", "0.5"), (0.8, 0.5)),
        (("te=0.25", "unet=0.75"), (0.25, 0.75)),
        (("unet=0.5",), (1.0, 0.5)),
        (("te=0.5",), (0.5, 0.5)),
        (("-1",), (-1.0, -1.0)),
        (("0.7", "0.6", "8"), (0.7, 0.6)),  # A1111's third positional ("dyn") is ignored
        (("abc",), "multiplier 'abc' is not a number"),
        (("1", "x"), "multiplier 'x' is not a number"),
        (("nan",), "multiplier 'nan' is not a number"),
        (("foo=1",), "unknown argument 'foo' (allowed: te=, unet=)"),
    ],
)
def test_lora_multipliers(args, expected):
    assert lora_multipliers(args) == expected


@dataclass(frozen=True)
class FakeLora:
    name: str
    short_hash: str = "0123456789ab"


def library(tmp_path: Path, *names: str) -> FileLibrary[FakeLora]:
    folder = tmp_path / "loras"
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"{name}.safetensors").write_bytes(b"")
    return FileLibrary(folder, (".safetensors",), lambda p: FakeLora(p.stem))


def test_prompt_networks_take_the_tags_out_and_find_the_files(tmp_path):
    loras = library(tmp_path, "detail", "style")
    read = prompt_networks(
        "a cat <lora:detail:0.8>, <lora:style:0.5:0.25> <lyco:detail> in the rain",
        "blurry <lora:style:1>",
        loras,  # type: ignore[arg-type]
    )
    assert read.prompt == "a cat ,   in the rain"  # only the tags go (A1111)
    assert read.negative_prompt == "blurry "
    assert [(u.lora.name, u.text_encoder, u.unet) for u in read.loras] == [
        ("detail", 0.8, 0.8), ("style", 0.5, 0.25), ("detail", 1.0, 1.0),
    ]  # fmt: skip
    assert read.warnings == (
        "<lora:style:1> was removed from the negative prompt: LoRAs apply from the prompt only",
    )


def test_what_cannot_be_used_is_left_out_with_a_warning(tmp_path):
    loras = library(tmp_path, "detail")
    read = prompt_networks(
        "a <lora:missing:0.5> <lora:detail:abc> <hypernet:old:1> dog",
        "",
        loras,  # type: ignore[arg-type]
    )
    assert read.prompt == "a    dog" and read.loras == ()
    assert read.warnings == (
        "<lora:missing:0.5> was left out: no LoRA named 'missing' is installed (installed: detail)",
        "<lora:detail:abc> was left out: multiplier 'abc' is not a number",
        "<hypernet:old:1> was removed from the prompt: hypernet networks are not supported",
    )
    without = prompt_networks("<lora:x>", "", None)
    assert without.warnings == (
        "<lora:x> was left out: no LoRA named 'x' is installed (installed: none)",
    )


def test_listed_caps_long_lists():
    assert listed([]) == "none"
    assert listed(["a", "b"]) == "a, b"
    assert listed([str(i) for i in range(13)], most=3) == "0, 1, 2 and 10 more"


def test_file_library_names_finds_and_reloads(tmp_path):
    folder = tmp_path / "vae"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.vae.pt").write_bytes(b"1")
    (folder / "sub" / "A.safetensors").write_bytes(b"22")
    (folder / "notes.txt").write_text("not a model")
    loads: list[Path] = []

    def load(path: Path) -> int:
        loads.append(path)
        return path.stat().st_size

    vaes = FileLibrary(folder, (".pt", ".safetensors"), load, name_of=file_name)
    assert vaes.names() == ["A.safetensors", "b.vae.pt"]
    assert vaes.get("a.safetensors") == 2  # case-insensitive when there is no exact match
    assert vaes.get("A.safetensors") == 2 and len(loads) == 1  # loaded once
    (folder / "sub" / "A.safetensors").write_bytes(b"333")  # changed on disk → loaded again
    assert vaes.get("A.safetensors") == 3 and len(loads) == 2
    vaes.refresh()
    assert vaes.get("A.safetensors") == 3 and len(loads) == 3
    assert vaes.get("missing") is None
    assert vaes.get("../b.vae.pt") is None  # names are looked up, never joined to a path
    assert FileLibrary(tmp_path / "absent", (".pt",), load).names() == []
