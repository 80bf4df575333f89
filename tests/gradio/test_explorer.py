"""The explorer's forward process is a task for the device's worker: the UI hands the worker the
image, the model, hardware and precision picked, the timesteps and the seed, loads no model
itself, and turns the worker's answers and failures into what the page shows.

The worker here is a stand-in that records the request; test_gradio_app.py runs the real one
(a worker process) through a real Gradio server."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from PIL import Image

import sd_core
from dali_gradio import DaliUI
from dali_gradio.explorer import FORWARD_STRIP, FORWARD_TIMEOUT_S
from stable_diffusion_api.config import Settings
from stable_diffusion_api.models import FailureKind
from stable_diffusion_api.services import Studio
from stable_diffusion_api.services.generator import ForwardResult, ForwardStep
from stable_diffusion_api.services.workers import ForwardFailed


def answer(timesteps: list[int]) -> ForwardResult:
    """What a worker returns: each step's picture is red = t mod 256, so it can be told apart."""
    alpha_bar = 0.25
    snr = alpha_bar / (1 - alpha_bar)
    return ForwardResult(
        clean=Image.new("RGB", (16, 8), "white"),
        steps=tuple(
            ForwardStep(
                t,
                alpha_bar,
                snr,
                10 * math.log10(snr),
                math.sqrt(1 / snr),
                Image.new("RGB", (16, 8), (t % 256, 0, 0)),
            )  # fmt: skip
            for t in timesteps
        ),
    )


@pytest.fixture
def explorer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[tuple[Any, ...]]]:
    def no_model_here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the UI's process loaded a model")

    monkeypatch.setattr(sd_core, "load_pipeline", no_model_here)
    studio = Studio(Settings(data_dir=tmp_path / "data"))
    calls: list[tuple[Any, ...]] = []

    def forward_process(
        model: str, device: str, dtype: str | None, image: Image.Image, timesteps: list[int],
        seed: int, timeout: float,
    ) -> ForwardResult:  # fmt: skip
        calls.append((model, device, dtype, image.size, image.mode, list(timesteps), seed, timeout))
        return answer(timesteps)

    monkeypatch.setattr(studio.workers, "forward_process", forward_process)
    return DaliUI(studio).explorer, calls


def test_forward_asks_the_worker(explorer: tuple[Any, list[Any]], tmp_path: Path) -> None:
    ui, calls = explorer
    Image.new("RGBA", (40, 20), (9, 9, 9, 255)).save(tmp_path / "in.png")
    clean, noisy, stats = ui.forward(str(tmp_path / "in.png"), 250.0, 7.0, "", "cpu", "auto")
    # "" is the project default (the built-in model); "auto" is the device's default dtype.
    assert calls == [("", "cpu", None, (40, 20), "RGBA", [250], 7, FORWARD_TIMEOUT_S)]
    assert clean.getpixel((0, 0)) == (255, 255, 255) and noisy.getpixel((0, 0)) == (250, 0, 0)
    assert "**t = 250**" in stats and "ᾱ_t = 0.25000" in stats
    assert "signal 0.5000 · noise 0.8660" in stats and "SNR = ᾱ/(1−ᾱ) = 0.3333" in stats
    assert "(-4.8 dB)" in stats and "σ = 1.732" in stats

    strip = ui.forward_strip(str(tmp_path / "in.png"), 3.0, "tiny", "cpu", "bfloat16")
    assert calls[-1] == ("tiny", "cpu", "bfloat16", (40, 20), "RGBA", list(FORWARD_STRIP), 3,
                         FORWARD_TIMEOUT_S)  # fmt: skip
    assert [caption for _, caption in strip] == [f"t={t} · SNR 0.333" for t in FORWARD_STRIP]
    assert [image.getpixel((0, 0))[0] for image, _ in strip] == [t % 256 for t in FORWARD_STRIP]


def test_forward_without_an_image_asks_nothing(explorer: tuple[Any, list[Any]]) -> None:
    ui, calls = explorer
    with pytest.raises(gr.Error, match="upload an image"):
        ui.forward(None, 10, 0, "", "cpu", "auto")
    with pytest.raises(gr.Error, match="upload an image"):
        ui.forward_strip("", 0, "", "cpu", "auto")
    assert calls == []


@pytest.mark.parametrize(
    ("raised", "shown"),
    [
        (ValueError("t must be from 0 to 999, got 1000"), "Forward process: t must be from 0"),
        (TimeoutError("the cpu worker did not run it within 300 s"), "did not run: the cpu worker"),
        (ForwardFailed("CUDA out of memory", FailureKind.OUT_OF_MEMORY), "out_of_memory"),
    ],
)
def test_worker_failures_become_messages(
    explorer: tuple[Any, list[Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    raised: Exception,
    shown: str,
) -> None:
    ui, _ = explorer

    def failing(*args: Any) -> ForwardResult:
        raise raised

    monkeypatch.setattr(ui.studio.workers, "forward_process", failing)
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    with pytest.raises(gr.Error) as caught:
        ui.forward(str(tmp_path / "in.png"), 1000, 0, "", "cpu", "auto")
    assert shown in caught.value.message
    assert str(raised) in caught.value.message
