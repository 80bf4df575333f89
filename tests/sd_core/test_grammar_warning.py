"""The engine says when a prompt is outside what the built-in model was taught — and only for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sd_core
from sd_core.checkpoint import save_checkpoint
from sd_core.config import TINY_TEST
from sd_core.params import GenerationParams
from sd_core.shapes_grammar import prompt_warning
from tests.reference import random_checkpoint

CAT = "a photo of a cat <lora:nosuch:1>"


def run(pipe: Any, prompt: str) -> tuple[str, ...]:
    params = GenerationParams(prompt=prompt, steps=1, seed=1, width=64, height=64)
    warnings: tuple[str, ...] = pipe.generate(params).warnings
    return warnings


def test_the_built_in_model_warns_first_then_the_other_warnings() -> None:
    pipe = sd_core.load_pipeline()
    assert pipe.config.name == "dali-tiny"
    grammar, lora = run(pipe, CAT)
    assert grammar == prompt_warning("a photo of a cat") and "'photo', 'cat'" in grammar
    assert "nosuch" in lora
    assert run(pipe, "a red circle on a blue background") == ()


def test_another_model_reads_free_text_without_a_note(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "t.safetensors", random_checkpoint(TINY_TEST, seed=5), TINY_TEST
    )
    pipe = sd_core.load_pipeline(path)
    assert pipe.config.name != "dali-tiny"
    [lora] = run(pipe, CAT)
    assert "nosuch" in lora


@pytest.mark.parametrize("prompt", ["a photo of a cat", "a red circle on a blue background"])
def test_the_cli_prints_it_as_a_warning(prompt: str, tmp_path: Path, capsys: Any) -> None:
    from sd_core.__main__ import main

    out = tmp_path / "x.png"
    assert (
        main(["generate", "--prompt", prompt, "--steps", "1", "--seed", "1", "--out", str(out)])
        == 0
    )
    said = capsys.readouterr().err
    assert ("warning: The built-in model only draws one or two shapes" in said) == ("cat" in prompt)
    assert out.is_file()


def test_jobs_batched_together_get_the_note_too() -> None:
    from sd_core.batched import BatchJob, generate_batch
    from sd_core.hooks import GenerationHooks

    pipe = sd_core.load_pipeline()
    jobs = [
        BatchJob(
            GenerationParams(prompt=prompt, steps=1, seed=1, width=64, height=64), GenerationHooks()
        )  # fmt: skip
        for prompt in ("a photo of a cat", "a red circle on a blue background")
    ]
    cat, circle = generate_batch(pipe, jobs)
    assert not isinstance(cat, Exception) and not isinstance(circle, Exception)
    assert cat.warnings == (prompt_warning("a photo of a cat"),) and circle.warnings == ()
