"""`python -m training train-all` at the micro preset: every phase, the record, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import sd_core
from sd_core.tensor_source import TensorSource
from training.__main__ import main
from training.train_all import FINAL, PHASES, STAGE_ONE, STATE_NAME

_FLAGS = ["--preset", "micro", "--decoder-steps", "2", "--decoder-batch", "2",
          "--decoder-samples", "4", "--judge-count", "3", "--judge-steps", "2",
          "--threads", "1"]  # fmt: skip


def test_train_all_runs_every_phase_and_records_the_judge(tmp_path: Path, capsys) -> None:
    out, export = tmp_path / "run", tmp_path / "models" / "m.safetensors"
    assert main(["train-all", "--out", str(out), *_FLAGS, "--export", str(export)]) == 0
    state = json.loads((out / STATE_NAME).read_text())
    assert state["done"] == list(PHASES) and set(state["seconds"]) == set(PHASES)
    assert (out / STAGE_ONE).is_file() and export.read_bytes() == (out / FINAL).read_bytes()
    metadata = TensorSource(out / FINAL).metadata
    judge = json.loads(metadata["dali_judge"])
    assert judge["count"] == 3 and judge["steps"] == 2
    assert set(judge["figures"]) >= {"median_iou", "shape", "color", "position", "size", "flat"}
    assert json.loads((out / "judge.json").read_text())["figures"] == judge["figures"]
    assert json.loads(metadata["dali_eval"])["count"] == 4  # the micro preset's evaluation
    decoder = json.loads(metadata["dali_decoder_finetune"])
    assert decoder["samples"]["drawn"] == 4 and decoder["samples"]["steps"] == 2
    pipe = sd_core.load_pipeline(out / FINAL)
    assert pipe.config.default_sampler == json.loads(metadata["dali_eval"])["sampler"]
    printed = capsys.readouterr().out
    assert "phase 1/4 train" in printed and "| median_iou |" in printed

    # A run stopped after its first phase continues with the second; finished phases stay.
    state["done"] = ["train"]
    (out / STATE_NAME).write_text(json.dumps(state))
    (out / FINAL).unlink()
    before = (out / STAGE_ONE).read_bytes()
    assert main(["train-all", "--out", str(out), *_FLAGS, "--resume"]) == 0
    assert "phase 1/4 train: done before" in capsys.readouterr().out
    assert (out / STAGE_ONE).read_bytes() == before and (out / FINAL).is_file()
    assert json.loads((out / STATE_NAME).read_text())["done"] == list(PHASES)

    # A new run refuses the folder; a resume refuses other phase settings.
    assert main(["train-all", "--out", str(out), *_FLAGS]) == 2
    assert "already holds a train-all run" in capsys.readouterr().err
    changed = [*_FLAGS[:2], "--decoder-steps", "5", *_FLAGS[4:]]
    assert main(["train-all", "--out", str(out), *changed, "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train-all", "--out", str(tmp_path / "none"), *_FLAGS, "--resume"]) == 2


@pytest.mark.parametrize("flag", ["--decoder-steps", "--judge-count"])
def test_bad_phase_flags_exit_2(tmp_path: Path, flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train-all", "--out", str(tmp_path), flag, "0"])
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_128_px_training_adds_a_pool_of_large_latents_and_the_file_draws_128(
    tmp_path: Path,
) -> None:
    import dataclasses

    import torch

    from training import train as tr
    from training.config import MICRO_TRAIN

    config = dataclasses.replace(MICRO_TRAIN, large_every=2, large_pool_size=6)
    trainer = tr.open_run(tmp_path / "run", torch.device("cpu"), config)
    sizes: list[int] = []
    original = tr.weighted_training_batch

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        images, weights = original(*args, **kwargs)
        sizes.append(images.shape[1])
        return images, weights

    tr.weighted_training_batch = spy  # type: ignore[assignment]
    try:
        trainer.train()
    finally:
        tr.weighted_training_batch = original  # type: ignore[assignment]
    assert sizes == [64, 128, 64, 128]  # every 2nd VAE step on 128-px renders
    assert trainer.pool["large_mean"].shape == (6, 4, 16, 16)
    assert trainer.pool["mean"].shape[-1] == 8
    path = trainer.export(tmp_path / "m.safetensors")
    params = sd_core.GenerationParams("a red circle on a blue background", seed=1, steps=2,
                                      width=128, height=128)  # fmt: skip
    assert sd_core.load_pipeline(path).generate(params).images[0].size == (128, 128)
    # Off (the default), no step is a large one: the run draws what it drew before.
    off = tr.open_run(tmp_path / "off", torch.device("cpu"), MICRO_TRAIN)
    large = []
    for step in range(10):
        off.step = step
        large.append(off._large_step())
    assert not any(large)
