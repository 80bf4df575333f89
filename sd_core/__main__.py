"""Command line: `python -m sd_core generate|info|samplers`.

Bad input ends with exit code 2 and one clear line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class _ShowDefaults(argparse.HelpFormatter):
    """`--help` shows each option's default, unless its help already says it or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == ""
        if "default" in text or nothing or action.default is argparse.SUPPRESS:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)".lstrip()
        return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m sd_core", description="Dali's Stable Diffusion v1.x engine")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser(
        "generate", help="generate images from a prompt", formatter_class=_ShowDefaults
    )
    gen.add_argument("--checkpoint", help="SD v1.x .safetensors/.ckpt (default: built-in model)")
    gen.add_argument("--prompt", required=True, help="what to draw (A1111 prompt syntax)")
    gen.add_argument("--negative-prompt", default="", help="what to steer away from")
    gen.add_argument("--seed", type=int, default=None, help="default: random")
    gen.add_argument("--steps", type=int, default=20, help="sampling steps, 1 … 150")
    gen.add_argument("--sampler", default=None, help="default: the model's (see `samplers`)")
    gen.add_argument("--guidance", type=float, default=7.0, help="CFG scale, 0 … 30")
    gen.add_argument("--width", type=int, default=None, help="default: the model's native size")
    gen.add_argument("--height", type=int, default=None, help="default: the model's native size")
    gen.add_argument("--batch", type=int, default=1, help="images, 1 … 8, seeds seed … seed+N-1")
    gen.add_argument(
        "--variation-seed",
        type=int,
        default=None,
        help="blend the noise towards this seed's (default: random)",
    )
    gen.add_argument("--variation-strength", type=float, default=0.0, help="0 … 1 (default 0)")
    gen.add_argument(
        "--clip-skip",
        type=int,
        default=1,
        help="AUTOMATIC1111's Clip skip: 1 = the text encoder's last layer",
    )
    gen.add_argument(
        "--vae",
        default=None,
        help="a VAE file's name in DATA_DIR/models/VAE (default: the model's)",
    )
    gen.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where loras/, embeddings/ and models/VAE/ are (default: the repository's data/)",
    )
    gen.add_argument(
        "--hires-scale", type=float, default=None, help="turn on the hires fix: upscale by this"
    )
    gen.add_argument("--hires-upscaler", default="Latent", help="Latent…, Lanczos, Nearest")
    gen.add_argument("--hires-steps", type=int, default=0, help="0: as --steps")
    gen.add_argument("--hires-strength", type=float, default=0.7, help="0 … 1 (default 0.7)")
    gen.add_argument(
        "--hires-scheduler",
        default=None,
        help="the hires pass's schedule type: automatic (its sampler's own), karras, "
        "exponential, sgm_uniform (default: the first pass's)",
    )
    gen.add_argument(
        "--hires-cfg",
        type=float,
        default=None,
        help="the hires pass's CFG scale (default: --guidance)",
    )
    gen.add_argument("--init-image", type=Path, default=None, help="img2img: start from this")
    gen.add_argument("--strength", type=float, default=0.75, help="img2img denoising, 0 … 1")
    gen.add_argument("--mask", type=Path, default=None, help="white = repaint")
    gen.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    gen.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="default: the device's own (see the hardware page)",
    )
    gen.add_argument("--low-memory", action="store_true")
    gen.add_argument("--out", type=Path, required=True, help="PATH.png")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    info = sub.add_parser("info", help="describe a checkpoint")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true")

    sub.add_parser("samplers", help="list sampler names")
    return parser


def _open_image(path: Path, what: str):  # type: ignore[no-untyped-def]
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{what} {str(path)!r} is not a readable image ({e})") from e


def output_paths(out: Path, count: int) -> list[Path]:
    """out.png, out-1.png, out-2.png, … for a batch."""
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out must end in .png, got {str(out)!r}")
    return [out if i == 0 else out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def _check_before_loading(args: argparse.Namespace) -> None:
    """What can be wrong with the sampler, device and checkpoint, found before the model takes
    seconds to load (each raises ValueError with the one line to show)."""
    from sd_core.devices import resolve_device
    from sd_core.samplers import get_sampler

    if args.sampler is not None:
        get_sampler(args.sampler)
    resolve_device(args.device)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise ValueError(f"checkpoint {args.checkpoint!r} does not exist")


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import sd_core
    from sd_core.assets import Assets
    from sd_core.extra_networks import listed
    from sd_core.pngmeta import save_png

    paths = output_paths(args.out, max(1, args.batch))
    params = sd_core.GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        batch=args.batch,
        strength=args.strength,
        variation_seed=args.variation_seed,
        variation_strength=args.variation_strength,
        clip_skip=args.clip_skip,
        vae=args.vae,
        hires=args.hires_scale is not None,
        hires_scale=2.0 if args.hires_scale is None else args.hires_scale,
        hires_upscaler=args.hires_upscaler,
        hires_steps=args.hires_steps,
        hires_strength=args.hires_strength,
        hires_scheduler=args.hires_scheduler,
        hires_guidance=args.hires_cfg,
    ).check()  # input errors come before the model loads
    _check_before_loading(args)
    init = _open_image(args.init_image, "--init-image") if args.init_image else None
    mask = _open_image(args.mask, "--mask") if args.mask else None
    assets = Assets.under(args.data_dir or sd_core.DATA_DIR)
    if args.vae is not None and assets.vaes.find(args.vae) is None:
        raise ValueError(
            f"--vae {args.vae!r}: no such file in {assets.folders.vaes} "
            f"(installed: {listed(assets.vaes.names())})"
        )
    pipe = sd_core.load_pipeline(
        args.checkpoint, device=args.device, dtype=args.dtype, low_memory=args.low_memory
    )
    pipe.use_assets(assets)
    bar = None

    def progress(step: int, total: int, _latents: object) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=total, desc="sampling", unit="step")
        bar.update(step - bar.n)

    try:
        result = pipe.generate(
            params, init_image=init, mask=mask, hooks=sd_core.GenerationHooks(on_step=progress)
        )
    finally:
        if bar is not None:
            bar.close()
    images = result.images
    for message in result.warnings:
        print(f"warning: {message}", file=sys.stderr)
    for image, path in zip(images, paths, strict=True):
        save_png(image, path)
        print(f"{path}  seed {image.info['seed']}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from sd_core.checkpoint import checkpoint_info

    info = checkpoint_info(args.path)
    record = {
        "path": str(info.path),
        "variant": info.variant,
        "dtype": info.dtype,
        "parameters": info.parameters,
        "sha256": info.sha256,
        "short_hash": info.short_hash,
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"path:       {info.path}")
        print(f"variant:    {info.variant}")
        print(f"dtype:      {info.dtype}")
        for component, count in info.parameters.items():
            print(f"{component + ':':<12}{count:,} parameters")
        print(f"sha256:     {info.sha256}")
        print(f"short hash: {info.short_hash}  (AUTOMATIC1111 'Model hash')")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "samplers":
        from sd_core.samplers import SAMPLERS

        # Either name works for --sampler: ours, or the label AUTOMATIC1111 shows.
        width = max(len(name) for name in SAMPLERS)
        for name, spec in SAMPLERS.items():
            print(f"{name:<{width}}  {spec.display_name}")
        return 0
    warnings.simplefilter("default")
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        return _generate(args) if args.command == "generate" else _info(args)
    except ValueError as e:  # our input errors (incl. CheckpointError)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
