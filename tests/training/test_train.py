"""The trainer at a micro config: it runs, writes a loadable file, resumes exactly, fails clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sd_core
from sd_core.tensor_source import TensorSource
from training import batches
from training import train as tr
from training.__main__ import main
from training.config import MICRO_TRAIN

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def _stop_at_first_diffusion_checkpoint(trainer: tr.Trainer) -> None:
    def log(record: dict) -> None:
        if record.get("phase") == "diffusion":
            trainer.stop_requested = True

    trainer.train(log=log)


def test_train_command_writes_a_file_that_loads_through_the_pipeline(tmp_path: Path) -> None:
    out, export = tmp_path / "run", tmp_path / "models" / "tiny.safetensors"
    code = main(
        ["train", "--out", str(out), "--preset", "micro", "--no-eval", "--export", str(export)]
    )
    assert code == 0
    assert (out / tr.CHECKPOINT_NAME).is_file() and export.is_file()
    metadata = TensorSource(export).metadata
    assert json.loads(metadata["dali_config"])["name"] == "dali-micro"
    assert "--preset micro" in metadata["dali_training_command"]
    pipe = sd_core.load_pipeline(export)
    assert pipe.config.vae.scale_factor > 0 and pipe.config.native_size == 64
    params = sd_core.GenerationParams("a red circle on a blue background", seed=1, steps=2)
    image = pipe.generate(params).images[0]
    assert image.size == (64, 64)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in records} == {"vae", "pool", "diffusion"}


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    whole = tr.open_run(tmp_path / "whole", CPU, MICRO_TRAIN)
    whole.train()

    first = tr.open_run(tmp_path / "split", CPU, MICRO_TRAIN)
    _stop_at_first_diffusion_checkpoint(first)
    assert (first.phase, first.step) == ("diffusion", MICRO_TRAIN.checkpoint_every)

    resumed = tr.open_run(tmp_path / "split", CPU, resume=True)
    assert (resumed.phase, resumed.step) == ("diffusion", MICRO_TRAIN.checkpoint_every)
    assert resumed.config == MICRO_TRAIN
    resumed.train()
    assert resumed.phase == "trained"
    for name in ("unet", "text_encoder"):
        for a, b in zip(
            whole.ema[name].state_dict().values(),
            resumed.ema[name].state_dict().values(),
            strict=True,
        ):
            assert torch.equal(a, b), name


def test_a_finished_run_can_be_extended_with_more_diffusion_steps(tmp_path: Path) -> None:
    tr.open_run(tmp_path, CPU, MICRO_TRAIN, command="first").train()
    more = MICRO_TRAIN.unet_steps + 2
    extended = tr.open_run(
        tmp_path, CPU, resume=True, command="second", overrides={"unet_steps": more}
    )
    assert (extended.phase, extended.step) == ("diffusion", MICRO_TRAIN.unet_steps)
    records: list[dict] = []
    extended.train(log=records.append)
    assert extended.phase == "trained" and extended.config.unet_steps == more
    assert records[-1]["step"] == more
    assert extended.command == "first ; extended by: second"
    with pytest.raises(tr.TrainingError, match="only --unet-steps may grow"):
        tr.open_run(tmp_path, CPU, resume=True, overrides={"unet_steps": 3})


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = tr.open_run(tmp_path, CPU, MICRO_TRAIN)
    _stop_at_first_diffusion_checkpoint(trainer)
    before = (tmp_path / tr.CHECKPOINT_NAME).read_bytes()

    def broken_save(obj: object, path: str) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    assert (tmp_path / tr.CHECKPOINT_NAME).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [tr.CHECKPOINT_NAME]
    assert tr.open_run(tmp_path, CPU, resume=True).step == MICRO_TRAIN.checkpoint_every


def test_refuses_to_overwrite_a_run_or_resume_nothing(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    tr.open_run(tmp_path / "run", CPU, MICRO_TRAIN).save()
    assert main(["train", "--out", str(tmp_path / "run"), "--preset", "micro"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--vae-steps", "99"]) == 2
    assert "vae_steps=4" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2
    assert "is not a file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--unet-steps", "0"], "--unet-steps: '0' must be greater than 0"),
        (["--vae-batch", "many"], "--vae-batch: 'many' is not a int"),
        (["--device", "cuda:7"], "device 'cuda:7' is not available"),
        (["--preset", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_bad_flags_exit_2_with_a_clear_message(
    tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_command_line_exit_status_for_a_bad_flag(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "training", "train", "--out", str(tmp_path), "--bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "unrecognized arguments: --bogus" in run.stderr


def test_finetune_decoder_changes_only_the_decoder_and_eval_record_writes_figures(
    tmp_path: Path,
) -> None:
    model, tuned = tmp_path / "micro.safetensors", tmp_path / "tuned.safetensors"
    assert (
        main(
            [
                "train",
                "--out",
                str(tmp_path / "run"),
                "--preset",
                "micro",
                "--no-eval",
                "--export",
                str(model),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "finetune-decoder",
                "--checkpoint",
                str(model),
                "--out",
                str(tuned),
                "--steps",
                "2",
                "--batch",
                "2",
                "--no-eval",
            ]
        )
        == 0
    )
    before, after = TensorSource(model), TensorSource(tuned)
    changed = {k for k in before.keys() if not torch.equal(before.pop(k), after.pop(k))}  # noqa: SIM118
    assert changed and all(
        k.startswith(("first_stage_model.decoder.", "first_stage_model.post_quant_conv."))
        for k in changed
    )
    assert json.loads(TensorSource(tuned).metadata["dali_decoder_finetune"])["steps"] == 2

    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(tuned),
                "--record",
                "--count",
                "3",
                "--steps",
                "2",
                "--tune-count",
                "1",
            ]
        )
        == 0
    )
    metadata = TensorSource(tuned).metadata
    record = json.loads(metadata["dali_eval"])
    assert record["count"] == 3 and set(record["accuracy"]) == {
        "color",
        "background",
        "shape",
        "position",
        "size",
    }
    assert json.loads(metadata["dali_config"])["default_sampler"] == record["sampler"]
    assert sd_core.load_pipeline(tuned).config.default_sampler == record["sampler"]


def test_shape_weights_mark_the_shape_and_optionally_a_ring_around_it() -> None:
    import numpy as np

    from training.shapes import BACKGROUND_COLORS

    images = np.empty((1, 9, 9, 3), dtype=np.uint8)
    images[:] = BACKGROUND_COLORS["gray"]
    images[0, 4, 4] = BACKGROUND_COLORS["red"]
    images[0, 0, 0] = np.array(BACKGROUND_COLORS["gray"]) + 5  # within the colour tolerance
    plain = batches.shape_weights(images, ["gray"], 4.0)
    assert plain.dtype == np.float32 and plain.shape == (1, 9, 9)
    assert plain[0, 4, 4] == 4.0 and (plain == 4.0).sum() == 1 and (plain == 1.0).sum() == 80
    ringed = batches.shape_weights(images, ["gray"], 4.0, ring=2)
    assert (ringed[0, 2:7, 2:7] == 4.0).all() and (ringed == 4.0).sum() == 25


@pytest.mark.parametrize("extra", [[], ["--guidance", "1.5"]])
def test_bench_times_an_image_of_a_model_file(extra: list[str], capsys) -> None:
    args = ["bench", "--checkpoint", str(sd_core.BUILTIN_MODEL_PATH), "--steps", "2",
            "--repeat", "1", "--threads", "1", *extra]  # fmt: skip
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["seconds_per_image"] > 0 and printed["steps"] == 2 and printed["threads"] == 1
