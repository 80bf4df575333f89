"""`python -m training train-all`: the whole model from nothing, as one resumable run (issue 17).

Four phases in one run folder, each recorded in `train-all.json` when it ends, so that
`--resume` skips the finished ones:

1. `train`: the VAE, then the text encoder + UNet (`training.train`; it checkpoints every
   `checkpoint_every` steps and resumes from the last one, bit for bit), exported to
   `stage-1.safetensors`;
2. `decoder`: the VAE decoder fine-tune (`training.finetune`) into `dali-tiny.safetensors`,
   on the encoder's latents and on `decoder_samples` of the stage-1 model's own drawings
   (`training.sampled_targets`, drawn with `judge_steps` steps) — a short phase that, if
   interrupted, starts again from its beginning;
3. `evaluate`: sampler and guidance chosen on training captions, the detector's held-out
   evaluation, written into the file (`training.evaluate.evaluate_and_record`);
4. `judge`: the independent judge (`training.judge.report`) on held-out captions, its figures
   and targets written into the file's metadata (`dali_judge`) and `judge.json`; a model
   trained on the v2 grammar (`v2_share`) is judged on held-out v2 captions too, and one
   trained at 128 px (`large_every`) on 128-px images too, beside the v1 figures.

Every phase shows a progress bar (tqdm). On a GPU pass `--device cuda`: every phase runs there.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from training.config import TrainConfig

STATE_NAME = "train-all.json"
STAGE_ONE = "stage-1.safetensors"
FINAL = "dali-tiny.safetensors"
PHASES = ("train", "decoder", "evaluate", "judge")


@dataclasses.dataclass(frozen=True)
class AllConfig:
    """The phases' settings beyond the trainer's own (`TrainConfig`)."""

    decoder_steps: int = 2000
    decoder_batch: int = 16
    decoder_samples: int = 3200  # the stage-1 model's own drawings the decoder learns from
    decoder_background_weight: float = 3.0
    judge_count: int = 300
    judge_steps: int = 20


def _state(out: Path) -> dict[str, Any]:
    path = out / STATE_NAME
    return json.loads(path.read_text()) if path.is_file() else {"done": [], "seconds": {}}


def _save_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / (STATE_NAME + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(out / STATE_NAME)


def record_judge(path: Path, record: dict[str, Any]) -> None:
    """Write `record` into the file's metadata as `dali_judge`; tensors and config kept. Atomic."""
    from safetensors import safe_open

    from sd_core.checkpoint import METADATA_CONFIG_KEY, config_from_metadata, save_checkpoint

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    config = config_from_metadata(metadata.pop(METADATA_CONFIG_KEY))
    metadata["dali_judge"] = json.dumps(record)
    save_checkpoint(path, tensors, config, metadata)


def train_all(
    out: Path,
    device: torch.device,
    config: TrainConfig,
    settings: AllConfig,
    resume: bool,
    command: str,
    overrides: dict[str, Any],
    train_phase: Callable[[Any], None],
) -> Path:
    """Run (or continue) every phase not yet done; returns the final model file.

    `train_phase(trainer)` runs the trainer (the caller installs its Ctrl-C handling and log).
    """
    from training import evaluate as ev
    from training import train as tr
    from training.finetune import finetune_decoder
    from training.judge.report import judge_model, judge_model_v2

    state = _state(out)
    if resume and not (out / STATE_NAME).is_file():
        raise tr.TrainingError(f"--resume: no train-all run in {str(out)!r}; start it there")
    if not resume and (out / STATE_NAME).exists():
        raise tr.TrainingError(
            f"--out {str(out)!r} already holds a train-all run; pass --resume or another --out"
        )
    if resume:
        saved = AllConfig(**state["settings"])
        if saved != settings:
            raise tr.TrainingError(
                f"--resume: the run in {str(out)!r} has {saved}, not {settings}; resume "
                "without the phase flags or start a new run"
            )
    out.mkdir(parents=True, exist_ok=True)
    state["settings"] = dataclasses.asdict(settings)
    state["command"] = state.get("command") or command
    _save_state(out, state)
    stage_one, final = out / STAGE_ONE, out / FINAL

    def finish(phase: str, started: float) -> None:
        state["done"].append(phase)
        state["seconds"][phase] = round(time.perf_counter() - started, 1)
        _save_state(out, state)

    for number, phase in enumerate(PHASES, start=1):
        if phase in state["done"]:
            print(f"phase {number}/{len(PHASES)} {phase}: done before")
            continue
        print(f"phase {number}/{len(PHASES)} {phase}")
        started = time.perf_counter()
        if phase == "train":
            has_checkpoint = (out / tr.CHECKPOINT_NAME).is_file()
            trainer = tr.open_run(out, device, config, has_checkpoint, command,
                                  overrides if has_checkpoint else None)  # fmt: skip
            train_phase(trainer)
            if trainer.stop_requested:
                return stage_one  # the caller reports the interruption
            trainer.export(stage_one)
        elif phase == "decoder":
            finetune_decoder(stage_one, final, device, settings.decoder_steps,
                             settings.decoder_batch, seed=config.seed, command=command,
                             samples=settings.decoder_samples,
                             background_weight=settings.decoder_background_weight,
                             sample_steps=settings.judge_steps,
                             v2_share=config.v2_share)  # fmt: skip
        elif phase == "evaluate":
            ev.evaluate_and_record(final, str(device), config, out / "eval.json")
        else:
            import sd_core
            from sd_core.tensor_source import TensorSource

            guidance = json.loads(TensorSource(final).metadata["dali_eval"])["guidance"]
            pipe = sd_core.load_pipeline(final, device=str(device), dtype="float32")
            count = min(settings.judge_count, 360)
            sampler, steps = pipe.config.default_sampler, settings.judge_steps
            reports = {"": judge_model(pipe, count, steps, sampler, guidance)}
            if config.v2_share > 0:  # a model taught the v2 words is judged on them too
                reports["v2"] = judge_model_v2(pipe, count, steps, sampler, guidance)
            if config.large_every > 0:  # a model taught 128 px is judged there too
                reports["128"] = judge_model(pipe, count, steps, sampler, guidance, size=128)
            result, summary = {}, {}
            for name, report in reports.items():
                print(report.table())
                whole = report.as_dict()
                brief = {k: v for k, v in whole.items() if k != "images"}
                if name:  # beside the v1 figures, under its own key
                    result[name], summary[name] = whole, brief
                else:
                    result.update(whole)
                    summary.update(brief)
            (out / "judge.json").write_text(json.dumps(result, indent=1) + "\n")
            record_judge(final, {**summary, "device": str(device)})
        finish(phase, started)
    return final
