"""`python -m training train|eval|judge|finetune-decoder|sample|bench …`: train, judge and try the built-in model.

    python -m training train --out runs/tiny --device cuda --export data/models/dali-tiny.safetensors
    python -m training train --out runs/tiny --resume          # continue an interrupted run
    python -m training train-all --out runs/all [--device cuda] [--resume]   # every phase
    python -m training eval --checkpoint data/models/dali-tiny.safetensors
    python -m training judge --checkpoint data/models/dali-tiny.safetensors --count 300 \
        --steps 20 --json docs/dali-tiny-judge.json --gallery docs/dali-tiny-gallery.png
    python -m training finetune-decoder --checkpoint runs/tiny/dali-tiny.safetensors --out x.safetensors
    python -m training sample --checkpoint … --prompt "a red circle on a blue background" --out x.png
    python -m training bench --checkpoint … --threads 2

Exit status: 0 done, 1 an evaluation below its targets (`eval --strict`), 2 bad flags or
inputs (the message says which and what is allowed), 130 interrupted (the last checkpoint is
kept; rerun with --resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from training.arguments import (
    DEFAULT_PRESET,
    PRESETS,
    TRAIN_FIELDS,
    flag_parser,
    non_negative_int,
    positive,
    preset_config,
    share,
)


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the trainer saved its state at a step boundary."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train dali-tiny (both phases), evaluate, write the file")
    train.add_argument(
        "--out", required=True, type=Path, help="run folder (checkpoint, logs, model)"
    )
    train.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--export", type=Path, help="also copy the final model file to this path")
    train.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    train.add_argument("--threads", type=positive(int), help="CPU threads for torch")
    train.add_argument(
        "--preset",
        choices=PRESETS,
        default=DEFAULT_PRESET,
        help="model and recipe: dali-tiny-v2 (default; the shipped file's: f=4 autoencoder, "
        "three-level UNet, v2 captions, 128 px), dali-tiny (the f=8 file of 2026-11), "
        "dali-tiny-f4 (dali-tiny with an f=4 autoencoder) or micro (seconds; for tests)",
    )
    for name, kind in TRAIN_FIELDS.items():
        parse = flag_parser(name, kind)
        train.add_argument(
            "--" + name.replace("_", "-"), type=parse, default=None, help=f"TrainConfig.{name}"
        )

    evaluate = sub.add_parser("eval", help="judge a checkpoint on held-out captions")
    evaluate.add_argument("--checkpoint", required=True, type=Path)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--count", type=positive(int), default=300)
    evaluate.add_argument("--steps", type=positive(int), default=20)
    evaluate.add_argument("--sampler", help="default: the model's default sampler")
    evaluate.add_argument("--guidance", type=float, help="default: the one the file records")
    evaluate.add_argument("--threads", type=positive(int))
    evaluate.add_argument("--json", type=Path, help="write the figures here")
    evaluate.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    evaluate.add_argument(
        "--tune-count",
        type=positive(int),
        default=16,
        help="training captions per sampler/guidance pair (with --record)",
    )
    evaluate.add_argument(
        "--record",
        action="store_true",
        help="as training ends: choose sampler and guidance on training "
        "captions, evaluate, and write the figures into the file",
    )

    everything = sub.add_parser(
        "train-all",
        help="the whole model from nothing: VAE, text encoder + UNet, decoder fine-tune, "
        "evaluation and judge, as one resumable run",
    )
    everything.add_argument("--out", required=True, type=Path, help="run folder")
    everything.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    everything.add_argument("--resume", action="store_true", help="continue the run in --out")
    everything.add_argument("--export", type=Path, help="also copy the final model here")
    everything.add_argument("--threads", type=positive(int), help="CPU threads for torch")
    everything.add_argument(
        "--preset", choices=PRESETS, default=DEFAULT_PRESET, help="as train's --preset"
    )
    everything.add_argument("--decoder-steps", type=positive(int), default=2000)
    everything.add_argument("--decoder-batch", type=positive(int), default=16)
    everything.add_argument("--decoder-samples", type=non_negative_int, default=3200)
    everything.add_argument("--decoder-background-weight", type=positive(float), default=3.0)
    everything.add_argument("--judge-count", type=positive(int), default=300)
    everything.add_argument("--judge-steps", type=positive(int), default=20)
    for name, kind in TRAIN_FIELDS.items():
        parse = flag_parser(name, kind)
        everything.add_argument(
            "--" + name.replace("_", "-"), type=parse, default=None, help=f"TrainConfig.{name}"
        )

    judge = sub.add_parser(
        "judge",
        help="the independent judge (IoU, colour ΔE, moment classifier) on held-out captions",
    )
    judge.add_argument("--checkpoint", required=True, type=Path)
    judge.add_argument("--device", default="cpu")
    judge.add_argument("--count", type=positive(int), default=300)
    judge.add_argument("--steps", type=positive(int), default=20)
    judge.add_argument("--sampler", help="default: the model's default sampler")
    judge.add_argument("--guidance", type=float, help="default: the one the file records")
    judge.add_argument("--threads", type=positive(int))
    judge.add_argument("--json", type=Path, help="write the figures and every verdict here")
    judge.add_argument("--gallery", type=Path, help="PNG of the first 64 images beside ideals")
    judge.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    judge.add_argument(
        "--record",
        action="store_true",
        help="write the figures into the file's metadata (dali_judge), as train-all does "
        "(its v2 and 128-px figures kept)",
    )
    judge.add_argument(
        "--grammar",
        choices=("v1", "v2"),
        default="v1",
        help="v1: the held-out v1 captions (default); v2: held-out styled and two-object ones",
    )
    judge.add_argument(
        "--size",
        type=int,
        choices=(64, 128),
        default=64,
        help="image width and height in pixels (default 64; the detector reads 64 only)",
    )
    judge.add_argument(
        "--autoencoder",
        action="store_true",
        help="judge held-out renders through the autoencoder alone (encode, decode; no UNet)",
    )
    judge.add_argument(
        "--negative-pairs",
        type=non_negative_int,
        default=16,
        help="captions drawn with and without their colour word as negative prompt (0: none)",
    )

    finetune = sub.add_parser(
        "finetune-decoder", help="fine-tune only the VAE decoder of a model file, then evaluate"
    )
    finetune.add_argument("--checkpoint", required=True, type=Path, help="the model to start from")
    finetune.add_argument("--out", required=True, type=Path, help="the new model file")
    finetune.add_argument("--device", default="cpu")
    finetune.add_argument("--threads", type=positive(int))
    finetune.add_argument("--steps", type=positive(int), default=2000)
    finetune.add_argument("--batch", type=positive(int), default=8)
    finetune.add_argument("--lr", type=positive(float), default=5e-4)
    finetune.add_argument("--shape-weight", type=positive(float), default=10.0)
    finetune.add_argument(
        "--ring",
        type=non_negative_int,
        default=2,
        help="pixels around the shape weighted like the shape (default 2)",
    )
    finetune.add_argument(
        "--samples",
        type=non_negative_int,
        default=0,
        help="first draw this many training captions with the model; 3/4 of every batch "
        "decodes those latents to the renderings their captions allow (default 0: none)",
    )
    finetune.add_argument(
        "--background-weight",
        type=positive(float),
        default=1.0,
        help="loss weight of the plain background beyond the ring (default 1)",
    )
    finetune.add_argument(
        "--v2-share",
        type=share,
        default=0.0,
        help="share of the posterior batches rendered from v2 captions (default 0)",
    )
    finetune.add_argument("--no-eval", action="store_true")
    finetune.add_argument(
        "--json", type=Path, help="also write the full evaluation report (failures, tuning) here"
    )

    sample = sub.add_parser("sample", help="draw images of one caption")
    sample.add_argument("--checkpoint", required=True, type=Path)
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--out", required=True, type=Path, help="PNG path (out-1.png, … for more)")
    sample.add_argument("--seed", type=non_negative_int, default=0)
    sample.add_argument("--count", type=positive(int), default=1)
    sample.add_argument("--steps", type=positive(int), default=20)
    sample.add_argument("--sampler")
    sample.add_argument("--guidance", type=float)
    sample.add_argument("--device", default="cpu")

    bench = sub.add_parser("bench", help="seconds for one image, or (--train) for a whole run")
    bench.add_argument("--checkpoint", type=Path, help="model to time (not with --train)")
    bench.add_argument(
        "--train",
        action="store_true",
        help="time each part of the f=8 dali-tiny recipe's training and evaluation and project "
        "their total",
    )
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--threads", type=positive(int))
    bench.add_argument("--steps", type=positive(int), default=20)
    bench.add_argument("--guidance", type=float, help="default: the one the file records")
    bench.add_argument("--repeat", type=positive(int), default=5)
    return parser


def _load(checkpoint: Path, device: str) -> tuple[Any, dict[str, Any]]:
    """A pipeline for `checkpoint` in float32 and the evaluation record the file carries."""
    import sd_core
    from sd_core.tensor_source import TensorSource

    if not checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r} is not a file")
    record = json.loads(TensorSource(checkpoint).metadata.get("dali_eval", "{}"))
    return sd_core.load_pipeline(checkpoint, device=device, dtype="float32"), record


def _guidance(args: argparse.Namespace, record: dict[str, Any]) -> float:
    if args.guidance is not None:
        return float(args.guidance)
    return float(record.get("guidance", 5.0))


def _atomic_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with open(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        Path(tmp).chmod(0o644)  # mkstemp makes it owner-only; a shipped file is for everyone
        Path(tmp).replace(target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _finish(trainer: Any, args: argparse.Namespace) -> Path:
    """Export the trained model, evaluate it (choosing sampler and guidance), write the file."""
    from training import evaluate as ev
    from training.train import MODEL_NAME

    path = trainer.out / MODEL_NAME
    trainer.export(path)
    if not args.no_eval:
        ev.evaluate_and_record(path, str(trainer.device), trainer.config, trainer.out / "eval.json")
    if args.export:
        _atomic_copy(path, args.export)
        print(f"wrote {args.export}")
    return path


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from sd_core.devices import resolve_device
    from training import train as tr

    if args.threads:
        torch.set_num_threads(args.threads)
    # Subnormal floats (|x| < 1.2e-38) are 10–100× slower on x86 CPUs and appear in the first
    # steps from the zero-initialised layers and Adam's tiny second moments; without this the
    # first steps of a run take seconds each. CPU only; no effect on CUDA.
    torch.set_flush_denormal(True)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    overrides = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}
    base = preset_config(args.preset)
    config = dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    command = "python -m training " + shlex.join(args.argv)
    trainer = tr.open_run(args.out, device, config, args.resume, command, overrides)

    def request_stop(signum: int, frame: Any) -> None:
        trainer.stop_requested = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    log_path = args.out / "log.jsonl"
    try:
        with open(log_path, "a") as log:
            trainer.train(log=lambda record: print(json.dumps(record), file=log, flush=True))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if trainer.stop_requested:
        raise Interrupted(
            f"interrupted in phase {trainer.phase!r} at step {trainer.step}; the checkpoint in "
            f"{str(args.out)!r} is saved: rerun the same command with --resume"
        )
    path = _finish(trainer, args)
    print(f"wrote {path}")
    return 0


def _train_all(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from sd_core.devices import resolve_device
    from training.train_all import AllConfig, train_all

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `train` does
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(f"--device: {e}")
    overrides = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}
    base = preset_config(args.preset)
    config = dataclasses.replace(base, **overrides)  # type: ignore[arg-type]
    settings = AllConfig(args.decoder_steps, args.decoder_batch, args.decoder_samples,
                         args.decoder_background_weight, args.judge_count,
                         args.judge_steps)  # fmt: skip
    command = "python -m training " + shlex.join(args.argv)
    stopped: list[Any] = []

    def run_trainer(trainer: Any) -> None:
        def request_stop(signum: int, frame: Any) -> None:
            trainer.stop_requested = True

        handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with open(args.out / "log.jsonl", "a") as log:
                trainer.train(log=lambda r: print(json.dumps(r), file=log, flush=True))
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if trainer.stop_requested:
            stopped.append(trainer)

    path = train_all(args.out, device, config, settings, args.resume, command, overrides,
                     run_trainer)  # fmt: skip
    if stopped:
        raise Interrupted(
            f"interrupted in phase {stopped[0].phase!r} at step {stopped[0].step}; the "
            f"checkpoint in {str(args.out)!r} is saved: rerun with --resume"
        )
    if args.export:
        _atomic_copy(path, args.export)
        print(f"wrote {args.export}")
    print(f"wrote {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from training import evaluate as ev

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.record:
        from training.config import TrainConfig

        if not args.checkpoint.is_file():
            raise FileNotFoundError(f"--checkpoint {str(args.checkpoint)!r} is not a file")
        config = dataclasses.replace(
            TrainConfig(), eval_count=args.count, eval_steps=args.steps, tune_count=args.tune_count
        )
        result = ev.evaluate_and_record(args.checkpoint, args.device, config, args.json)
        return 1 if args.strict and not all(result.meets_targets().values()) else 0
    pipe, record = _load(args.checkpoint, args.device)
    sampler = args.sampler or pipe.config.default_sampler
    result = ev.evaluate(pipe, args.count, args.steps, sampler, _guidance(args, record))
    print(result.summary())
    for failure in result.failures[:5]:
        print("  missed:", failure)
    if args.json:
        args.json.write_text(json.dumps(result.as_dict(), indent=2))
    return 1 if args.strict and not all(result.meets_targets().values()) else 0


def _judge(args: argparse.Namespace) -> int:
    import torch

    from training.judge.gallery import Gallery
    from training.judge.report import (
        judge_autoencoder,
        judge_model,
        judge_model_v2,
        negative_check,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.grammar == "v2" and args.gallery:
        raise ValueError("--gallery draws v1 captions only; leave it out with --grammar v2")
    if args.negative_pairs > 60:
        raise ValueError(f"--negative-pairs {args.negative_pairs} is out of range; allowed: 0..60")
    pipe, record = _load(args.checkpoint, args.device)
    sampler = args.sampler or pipe.config.default_sampler
    gallery = Gallery() if args.gallery else None
    if args.autoencoder and (args.grammar == "v2" or args.gallery or args.record):
        raise ValueError("--autoencoder judges v1 renders without a gallery or record; leave "
                         "out --grammar v2, --gallery and --record")  # fmt: skip
    if args.record and (args.grammar == "v2" or args.size != 64):
        raise ValueError("--record keeps the v1 judge's figures at 64 px; leave out "
                         "--grammar v2 and --size")  # fmt: skip
    if args.size != 64 and (args.autoencoder or args.gallery):
        raise ValueError(f"--size {args.size}: --autoencoder and --gallery judge 64-px "
                         "images; leave out --size")  # fmt: skip
    if args.autoencoder:
        report = judge_autoencoder(pipe, args.count)
    elif args.grammar == "v2":
        report = judge_model_v2(pipe, args.count, args.steps, sampler, _guidance(args, record),
                                size=args.size)  # fmt: skip
    else:
        report = judge_model(pipe, args.count, args.steps, sampler, _guidance(args, record),
                             keep=gallery.add if gallery else None, size=args.size)  # fmt: skip
    if args.negative_pairs and not args.autoencoder:
        report.figures.update(negative_check(pipe, args.negative_pairs, args.steps, sampler,
                                             _guidance(args, record)))  # fmt: skip
    if args.autoencoder:
        print(f"{report.count} held-out renders through the autoencoder alone")
    else:
        print(f"{report.count} held-out captions, {report.size} px, {report.steps} steps of "
              f"{report.sampler}, guidance {report.guidance:g}")  # fmt: skip
    print(report.table())
    summary = {k: v for k, v in report.as_dict().items() if k != "images"}
    print(json.dumps(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    if gallery is not None:
        gallery.save(args.gallery)
        print(f"wrote {args.gallery}")
    if args.record:
        from sd_core.tensor_source import TensorSource
        from training.train_all import record_judge

        # The v1 figures at 64 px are replaced; the v2 and 128-px ones train-all recorded stay.
        before = json.loads(TensorSource(args.checkpoint).metadata.get("dali_judge", "{}"))
        kept = {key: before[key] for key in ("v2", "128") if key in before}
        record_judge(args.checkpoint, {**kept, **summary, "device": args.device})
        print(f"recorded the figures in {args.checkpoint}")
    return 1 if args.strict and not all(report.meets_targets().values()) else 0


def _finetune(args: argparse.Namespace) -> int:
    import torch

    from sd_core.devices import resolve_device
    from training import evaluate as ev
    from training.config import TrainConfig
    from training.finetune import finetune_decoder

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as `train` does
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"--checkpoint {str(args.checkpoint)!r} is not a file")
    device = resolve_device(args.device)
    command = "python -m training " + shlex.join(args.argv)
    record = finetune_decoder(
        args.checkpoint,
        args.out,
        device,
        args.steps,
        args.batch,
        args.lr,
        args.shape_weight,
        args.ring,
        command=command,
        samples=args.samples,
        background_weight=args.background_weight,
        v2_share=args.v2_share,
    )
    print(json.dumps(record))
    if not args.no_eval:
        ev.evaluate_and_record(args.out, str(device), TrainConfig(), args.json)
    print(f"wrote {args.out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    pipe, record = _load(args.checkpoint, args.device)
    from sd_core.params import GenerationParams

    params = GenerationParams(args.prompt, seed=args.seed, steps=args.steps, sampler=args.sampler,
                              guidance=_guidance(args, record), batch=args.count)  # fmt: skip
    images = pipe.generate(params).images
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        path = args.out if i == 0 else args.out.with_name(f"{args.out.stem}-{i}{args.out.suffix}")
        image.save(path)
        print(path)
    return 0


def _bench(args: argparse.Namespace) -> int:
    import torch

    from training import evaluate as ev

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train:
        torch.set_flush_denormal(True)  # as `train` does
        from sd_core.devices import resolve_device
        from training.bench import estimate_training
        from training.config import TrainConfig

        print(json.dumps(estimate_training(TrainConfig(), resolve_device(args.device))))
        return 0
    if args.checkpoint is None:
        raise ValueError("bench needs --checkpoint PATH (or --train)")
    pipe, record = _load(args.checkpoint, args.device)
    seconds = ev.benchmark(
        pipe, args.steps, pipe.config.default_sampler, _guidance(args, record), args.repeat
    )
    print(
        json.dumps(
            {
                "seconds_per_image": round(seconds, 4),
                "steps": args.steps,
                "device": args.device,
                "threads": torch.get_num_threads(),
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from sd_core.checkpoint import CheckpointError
    from training.train import TrainingError

    try:
        if args.command == "train":
            return _train(args, parser)
        if args.command == "train-all":
            return _train_all(args, parser)
        if args.command == "eval":
            return _eval(args)
        if args.command == "judge":
            return _judge(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "finetune-decoder":
            return _finetune(args)
        return _bench(args)
    except Interrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return 130
    except (TrainingError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
