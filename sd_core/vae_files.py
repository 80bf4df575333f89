"""Separate VAE files (`*.vae.safetensors`, `.pt`, `.ckpt`), as users keep them for A1111.

A VAE file holds the autoencoder alone in the original layout (`encoder.…`, `decoder.…`,
`quant_conv.…`, `post_quant_conv.…`), sometimes under the checkpoint's `first_stage_model.`
prefix and sometimes with training leftovers (`loss.…`, `model_ema.…`), which are ignored.
Files are named by their whole file name, as A1111's `sd_vae` option and the `VAE` infotext key
name them; `VAE hash` is the file's sha256, first 10 hex digits.

`inspect_vae` checks a file's keys without building anything; `build_vae` makes an
`AutoencoderKL` for a model's VAE config from it (one tensor at a time, `assign=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sd_core.assets import VAE_SUFFIXES
from sd_core.config import VAEConfig
from sd_core.file_library import FileLibrary, file_name
from sd_core.tensor_source import CheckpointError, TensorSource
from sd_core.vae import CHECKPOINT_PREFIX, AutoencoderKL

_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


class VaeError(CheckpointError):
    """A VAE file that cannot be used, with the reason in words."""


@dataclass(frozen=True)
class VaeFile:
    """A VAE file found and checked: its name (file name), path and A1111's short hash."""

    name: str
    path: Path
    short_hash: str


def _own_key(key: str) -> str | None:
    """The key without the checkpoint prefix when it belongs to the autoencoder, else None."""
    key = key.removeprefix(CHECKPOINT_PREFIX)
    return key if key.startswith(_PARTS) else None


def _source(path: Path) -> TensorSource:
    try:
        return TensorSource(path, "VAE")
    except VaeError:
        raise
    except CheckpointError as e:
        raise VaeError(str(e)) from e


def inspect_vae(path: Path) -> VaeFile:
    """Check that `path` is a VAE in the original layout; VaeError says what it is instead."""
    from sd_core.checkpoint import file_sha256

    source = _source(path)
    keys = source.keys()
    if any(part in k for k in keys for part in (".down_blocks.", ".up_blocks.", ".mid_block.")):
        raise VaeError(
            f"VAE {str(path)!r} is in diffusers' layout (down_blocks/up_blocks); A1111 and Dali "
            "read the original layout (encoder.down.…, decoder.up.…): convert it first"
        )
    if not any(_own_key(k) is not None for k in keys):
        raise VaeError(
            f"VAE {str(path)!r} is not a Stable Diffusion VAE: it has no encoder./decoder. keys "
            f"(first keys: {', '.join(keys[:3]) or 'none'})"
        )
    return VaeFile(path.name, path, file_sha256(path)[:10])


def build_vae(
    file: VaeFile, config: VAEConfig, device: torch.device, dtype: torch.dtype
) -> AutoencoderKL:
    """An `AutoencoderKL` for `config` holding `file`'s weights, in eval mode on `device`.

    Raises VaeError when a tensor is missing or its shape does not fit the model's VAE.
    """
    with torch.device("meta"):
        model = AutoencoderKL(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    source = _source(file.path)
    state = {}
    for key in list(source.keys()):
        own = _own_key(key)
        if own is None:
            continue
        if own not in expected:
            raise VaeError(f"VAE {file.name!r}: tensor {key!r} has no place in this model's VAE")
        if source.shape(key) != expected[own]:
            raise VaeError(
                f"VAE {file.name!r}: tensor {key!r} has shape {list(source.shape(key))}, this "
                f"model's VAE needs {list(expected[own])}"
            )
        state[own] = source.pop(key).to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise VaeError(
            f"VAE {file.name!r} lacks {len(missing)} tensors this model's VAE needs "
            f"(first: {', '.join(missing[:3])})"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def vae_library(directory: Path) -> FileLibrary[VaeFile]:
    """The VAE files under `directory` (A1111's `models/VAE`), by file name."""
    return FileLibrary(directory, VAE_SUFFIXES, inspect_vae, name_of=file_name)


class LoadedVae:
    """The separate VAE a pipeline used last, kept built until another is asked for (one at a
    time: an SD VAE is 335 MB in float32)."""

    def __init__(self) -> None:
        self.file: VaeFile | None = None
        self._model: AutoencoderKL | None = None

    def get(
        self, file: VaeFile, config: VAEConfig, device: torch.device, dtype: torch.dtype
    ) -> AutoencoderKL:
        if self._model is None or self.file != file:
            self._model = None  # let the previous one go before the next is built
            self._model = build_vae(file, config, device, dtype)
            if device.type == "cpu":  # as the pipeline's own VAE (faster oneDNN convolutions)
                self._model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self.file = file
        return self._model
