"""The judge's recorded baseline of the shipped model (docs/dali-tiny-judge.json) is what the
model and the judge give today, and what docs/dali-tiny.md says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sd_core
from training.judge.report import TARGETS, JudgeReport, judge_model
from training.shapes import eval_seed, held_out_scenes, parse_caption

DOCS = Path(__file__).resolve().parents[2] / "docs"
RECORD = json.loads((DOCS / "dali-tiny-judge.json").read_text())


def test_record_is_300_held_out_images_and_its_figures_follow_from_its_verdicts() -> None:
    assert RECORD["count"] == 300 and RECORD["steps"] == 20 and RECORD["targets"] == TARGETS
    images = RECORD["images"]
    scenes = held_out_scenes()[:300]
    assert [i["caption"] for i in images] == [s.caption for s in scenes]
    assert [i["seed"] for i in images] == [eval_seed(k) for k in range(300)]
    figures = RECORD["figures"]
    ious = sorted(i["iou"] for i in images)
    assert figures["median_iou"] == pytest.approx((ious[149] + ious[150]) / 2, abs=1e-4)
    assert figures["iou_at_least_0.7"] == sum(i >= 0.7 for i in ious) / 300
    for name in ("shape", "color", "position", "size"):
        right = sum(i[name] == getattr(parse_caption(i["caption"]), name) for i in images)
        assert figures[name] == pytest.approx(right / 300), name
    assert figures["flat"] == pytest.approx(sum(i["background_std"] <= 3 for i in images) / 300)


def test_docs_table_is_the_record() -> None:
    text = (DOCS / "dali-tiny.md").read_text()
    block = text.split("<!-- judge-shipped:start -->")[1].split("<!-- judge-shipped:end -->")[0]
    report = JudgeReport(300, 20, RECORD["sampler"], RECORD["guidance"], RECORD["figures"])
    assert block.strip() == report.table()
    # The shipped file still misses the targets on shape, all attributes and flatness.
    assert {n for n, ok in RECORD["meets_targets"].items() if not ok} == {
        "shape", "all_attributes", "flat"
    }  # fmt: skip
    assert re.search(r"shape \| 91\.0 %", block)
    # The record travels in the file too (judge --record), beside train-all's v2 and 128-px
    # figures of the same file.
    from sd_core.tensor_source import TensorSource

    recorded = json.loads(TensorSource(sd_core.BUILTIN_MODEL_PATH).metadata["dali_judge"])
    assert recorded["figures"] == RECORD["figures"]
    assert recorded["v2"]["count"] == recorded["128"]["count"] == 300
    assert recorded["128"]["size"] == 128


def test_a_fresh_run_gives_the_recorded_verdicts() -> None:
    # The first 6 recorded images, drawn again by the shipped model and judged again: a change
    # of the model file, the pipeline or the judge shows here. (CPU runs agree to within one
    # level of 255, which can move a pixel across the mask threshold: IoU within 0.03.)
    pipe = sd_core.load_pipeline()
    assert pipe.config.default_sampler == RECORD["sampler"]
    fresh = judge_model(pipe, 6, 20, RECORD["sampler"], RECORD["guidance"], progress=False)
    for new, old in zip(fresh.images, RECORD["images"][:6], strict=True):
        assert new["caption"] == old["caption"]
        assert abs(new["iou"] - old["iou"]) <= 0.03, (new, old)
        read = ("color", "shape", "position", "size", "background")
        assert {k: new[k] for k in read} == {k: old[k] for k in read}, (new, old)
        assert abs(new["background_std"] - old["background_std"]) < 0.5


def test_gallery_holds_64_pairs() -> None:
    gallery = np.asarray(Image.open(DOCS / "dali-tiny-gallery.png").convert("RGB"))
    # 8 × 8 cells of (64 + 4) × 130 pixels with 6-pixel gaps.
    assert gallery.shape == (8 * (68 + 6) + 6, 8 * (130 + 6) + 6, 3)


def test_judge_command_writes_figures_verdicts_and_gallery(tmp_path: Path, capsys) -> None:
    from training.__main__ import main

    report, gallery = tmp_path / "judge.json", tmp_path / "gallery.png"
    args = ["judge", "--checkpoint", str(sd_core.BUILTIN_MODEL_PATH), "--count", "2",
            "--steps", "4", "--threads", "1", "--negative-pairs", "1",
            "--json", str(report), "--gallery", str(gallery)]  # fmt: skip
    assert main(args) == 0
    written = json.loads(report.read_text())
    assert written["count"] == 2 and len(written["images"]) == 2
    assert {"negative_plain_delta_e", "negative_with_delta_e", "negative_moved"} <= set(
        written["figures"]
    )
    assert "| negative_moved |" in capsys.readouterr().out
    cells = np.asarray(Image.open(gallery))
    assert cells.shape[0] == 68 + 12 and cells.shape[1] == 8 * 136 + 6  # one row of 8 slots
    assert main([*args[:-4], "--negative-pairs", "61"]) == 2
    assert "--negative-pairs 61" in capsys.readouterr().err
    # --record writes the figures into the judged file's metadata, tensors untouched.
    import shutil

    from sd_core.tensor_source import TensorSource
    from training.train_all import record_judge

    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(sd_core.BUILTIN_MODEL_PATH, copy)
    # As train-all leaves it: v1 figures with the v2 and 128-px ones beside them.
    record_judge(copy, {"figures": {"shape": 0.0}, "v2": {"figures": {"style": 0.5}},
                        "128": {"figures": {"size": 0.25}}})  # fmt: skip
    recorded = ["judge", "--checkpoint", str(copy), "--count", "2", "--steps", "2",
                "--threads", "1", "--negative-pairs", "0", "--json", str(report), "--record"]  # fmt: skip
    assert main(recorded) == 0
    metadata = TensorSource(copy).metadata
    kept = json.loads(metadata["dali_judge"])
    assert kept["figures"] == json.loads(report.read_text())["figures"]
    assert (kept["v2"], kept["128"]) == ({"figures": {"style": 0.5}}, {"figures": {"size": 0.25}})
    before, after = TensorSource(sd_core.BUILTIN_MODEL_PATH), TensorSource(copy)
    assert all(torch.equal(before.pop(k), after.pop(k)) for k in before.keys())  # noqa: SIM118
    # In the record, the negative prompt moved the colour away on average (by 2.3 ΔE for this
    # file at its guidance 3; the previous one, 20.9: docs/dali-tiny.md says why it fell).
    figures = RECORD["figures"]
    assert figures["negative_with_delta_e"] > figures["negative_plain_delta_e"] + 2


class _PerfectPipe:
    """Stands in for a pipeline that draws exactly what the renderer draws."""

    class _Result:
        def __init__(self, image: Image.Image) -> None:
            self.images = [image]

    def __init__(self) -> None:
        self.sizes: set[tuple[int, int]] = set()

    def generate(self, params):  # type: ignore[no-untyped-def]
        from training.shapes import parse_any, render

        self.sizes.add((params.width, params.height))
        image = render(parse_any(params.prompt), params.seed, params.width)
        return self._Result(Image.fromarray(image))


@pytest.mark.parametrize("size", [64, 128])
def test_perfect_drawings_score_perfectly_at_either_size(size: int) -> None:
    from training.judge.report import judge_model_v2

    pipe = _PerfectPipe()
    v1 = judge_model(pipe, 12, 20, "euler", 5.0, progress=False, size=size)
    v2 = judge_model_v2(pipe, 12, 20, "euler", 5.0, progress=False, size=size)
    assert pipe.sizes == {(size, size)} and v1.size == v2.size == size
    assert all(v1.meets_targets().values()) and all(v2.meets_targets().values())
    assert v1.as_dict()["size"] == size
    # The detector reads 64-px images only: at 128 its figures are left out, not made up.
    assert ("detector_shape" in v1.figures) == (size == 64)


def test_the_size_flag_refuses_what_judges_64_px_only(capsys) -> None:  # type: ignore[no-untyped-def]
    from training.__main__ import main

    base = ["judge", "--checkpoint", str(sd_core.BUILTIN_MODEL_PATH), "--size", "128"]
    for extra in (["--record"], ["--autoencoder"], ["--gallery", "g.png"]):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert extra[0] in err and "--size" in err
    with pytest.raises(SystemExit):
        main([*base[:-1], "96"])
    assert "invalid choice: 96" in capsys.readouterr().err


def test_v2_report_scores_perfect_drawings_perfectly_and_the_model_poorly() -> None:
    from training.judge.report import judge_model_v2

    perfect = judge_model_v2(_PerfectPipe(), 24, 20, "euler", 5.0, progress=False)
    assert all(perfect.meets_targets().values()), perfect.figures
    assert perfect.figures["all_attributes"] == 1.0 and perfect.figures["style"] == 1.0
    assert any("relation" in image for image in perfect.images)
    # The shipped model never learned the v2 words: it cannot place two objects.
    model = judge_model_v2(sd_core.load_pipeline(), 6, 8, "euler_a", 5.0, progress=False)
    assert model.figures["all_attributes"] < 1.0


class _IdentityAutoencoder(torch.nn.Module):
    """An autoencoder that gives back exactly what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # for the device and dtype

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros_like(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_autoencoder_round_trips_are_judged_and_a_lossless_one_is_perfect(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from training.__main__ import main
    from training.judge.report import AUTOENCODER, judge_autoencoder

    perfect = judge_autoencoder(SimpleNamespace(vae=_IdentityAutoencoder()), 20, progress=False)
    assert perfect.sampler == AUTOENCODER and len(perfect.images) == 20
    assert all(perfect.meets_targets().values()), perfect.figures

    report = tmp_path / "autoencoder.json"
    args = ["judge", "--checkpoint", str(sd_core.BUILTIN_MODEL_PATH), "--autoencoder",
            "--count", "40", "--threads", "1", "--json", str(report)]  # fmt: skip
    assert main(args) == 0
    assert "40 held-out renders through the autoencoder alone" in capsys.readouterr().out
    shipped = json.loads(report.read_text())
    assert shipped["sampler"] == AUTOENCODER and len(shipped["images"]) == 40
    # The shipped decoder still loses some outlines (83 % of 300 shapes kept, docs/dali-tiny.md)
    assert 0.5 < shipped["figures"]["shape"] < 1.0
    assert main([*args, "--grammar", "v2"]) == 2
    assert "--autoencoder" in capsys.readouterr().err
    assert main([*args, "--record"]) == 2
    assert "--record" in capsys.readouterr().err
