"""A loaded pipeline made faster for its device: layout, fused attention projections,
torch.compile and CUDA-graph capture, and the dtype it runs in.

`FastPath` says what to apply; `apply_fast_path(pipeline, fast)` applies it in place. The
default, `FastPath()`, changes nothing: the pipeline as loaded (eager PyTorch; on the CPU the
UNet and VAE already run channels_last, see `StableDiffusionPipeline.__init__`), which is what
the golden images pin. Which fast path a device gets is measured, not guessed:
`sd_core.autotune` tries those `valid_modes` allows, checks each image against float32 eager and
keeps the fastest.

Modes:
  eager          the models as loaded.
  channels_last  the UNet and VAE in NHWC memory layout (on the CPU the pipeline already is).
  compile        `torch.compile` (inductor) of the UNet and the VAE decoder, in place
                 (`nn.Module.compile`), so module paths and state-dict keys do not change and
                 LoRAs still find and edit their weights. Needs a C compiler on the CPU and
                 Triton on CUDA.
  cuda_graphs    the UNet compiled with mode "reduce-overhead": inductor's CUDA graphs, one
                 capture per shape (CUDA only); the VAE decoder as in `compile`.

`fused_qkv` is a weight-preserving transform: each self-attention's to_q, to_k and to_v weights
are copied once into one (3·dim, dim) matrix and the three parameters become views into it (a
cross-attention's to_k and to_v into a (2·dim, context) one). The checkpoint's keys and the
values of every parameter stay as they were, so a state dict still saves and loads, and a LoRA
that edits `to_q.weight` in place edits the fused matrix too. One matrix product then replaces
three (or two).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sd_core.devices import DTYPES

if TYPE_CHECKING:
    from sd_core.pipeline import StableDiffusionPipeline

MODES = ("eager", "channels_last", "compile", "cuda_graphs")


@dataclass(frozen=True)
class FastPath:
    """How a loaded pipeline runs. mode: one of MODES; dtype: "float32", "float16" or
    "bfloat16" (None: the dtype it was loaded in); fused_qkv: fuse attention projections."""

    mode: str = "eager"
    dtype: str | None = None
    fused_qkv: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"FastPath.mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(
                f"FastPath.dtype={self.dtype!r} is not one of {', '.join(DTYPES)} (or None)"
            )

    @property
    def label(self) -> str:
        """ "compile + fused QKV, float16": how the hardware page names it."""
        parts = [self.mode] + (["fused QKV"] if self.fused_qkv else [])
        return " + ".join(parts) + (f", {self.dtype}" if self.dtype else "")

    def as_json(self) -> dict[str, object]:
        return {"mode": self.mode, "dtype": self.dtype, "fused_qkv": self.fused_qkv}

    @classmethod
    def from_json(cls, data: object) -> FastPath:
        """The inverse of `as_json`; ValueError for anything else."""
        if not isinstance(data, dict):
            raise ValueError(f"a fast path is a JSON object, got {data!r}")
        mode, dtype, fused = data.get("mode"), data.get("dtype"), data.get("fused_qkv", False)
        if not isinstance(mode, str) or not (dtype is None or isinstance(dtype, str)):
            raise ValueError(f"a fast path needs a string mode and dtype, got {data!r}")
        if not isinstance(fused, bool):
            raise ValueError(f"fused_qkv must be true or false, got {fused!r}")
        return cls(mode, dtype, fused)


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can."""
    if device.type == "cpu":
        if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++")):
            return "torch.compile needs a C/C++ compiler on the CPU and none was found"
        return None
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on CUDA needs Triton, which is not installed"
        return None
    return f"torch.compile is not tried on {device.type}"


def valid_modes(device: torch.device) -> dict[str, str | None]:
    """Each of MODES → None when it can run on `device`, else why not."""
    compile_why = compile_unavailable(device)
    return {
        "eager": None,
        "channels_last": (
            "the CPU pipeline already runs channels_last (the same as eager)"
            if device.type == "cpu"
            else None
        ),
        "compile": compile_why,
        "cuda_graphs": "CUDA graphs need a CUDA device" if device.type != "cuda" else compile_why,
    }


def fuse_qkv(model: nn.Module) -> int:
    """Fuse the attention projections of every `sd_core.unet.CrossAttention` in `model`, in
    place (see the module docstring); returns how many were fused. Values are unchanged."""
    from sd_core.unet import CrossAttention

    count = 0
    for module in model.modules():
        if not isinstance(module, CrossAttention) or module.fused_kv is not None:
            continue
        q, k, v = module.to_q.weight, module.to_k.weight, module.to_v.weight
        linears: tuple[nn.Linear, ...]
        with torch.no_grad():
            if q.shape[1] == k.shape[1]:  # self-attention (or a cross one of the same width)
                fused = torch.cat([q, k, v]).detach()
                linears = (module.to_q, module.to_k, module.to_v)
                module.fused_qkv = fused
                module.fused_kv = fused[q.shape[0] :]  # the k and v rows, no copy
            else:
                fused = torch.cat([k, v]).detach()
                linears = (module.to_k, module.to_v)
                module.fused_kv = fused
            for linear, view in zip(linears, fused.chunk(len(linears)), strict=True):
                linear.weight = nn.Parameter(view, requires_grad=False)
        count += 1
    return count


def apply_fast_path(pipeline: StableDiffusionPipeline, fast: FastPath) -> None:
    """Make `pipeline` run as `fast` says, in place. Raises ValueError when the pipeline's
    device cannot run that mode (with the reason) or the pipeline keeps its models on the CPU
    between uses (low-memory mode: moving the models would undo fusion and compilation)."""
    if fast == FastPath():
        return
    if pipeline.low_memory:
        raise ValueError("a fast path cannot be applied to a low-memory pipeline")
    why = valid_modes(pipeline.device)[fast.mode]
    if why is not None and fast.mode != "channels_last":
        raise ValueError(f"fast path mode {fast.mode!r} is not valid on {pipeline.device}: {why}")
    if fast.dtype is not None and DTYPES[fast.dtype] != pipeline.dtype:
        dtype = DTYPES[fast.dtype]
        for model in (pipeline.text_encoder, pipeline.vae, pipeline.unet):
            model.to(dtype)
        pipeline.dtype = dtype
    if fast.mode == "channels_last":
        pipeline.unet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        pipeline.vae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if fast.fused_qkv:
        fuse_qkv(pipeline.unet)
    if fast.mode in ("compile", "cuda_graphs"):
        mode = "reduce-overhead" if fast.mode == "cuda_graphs" else None
        pipeline.unet.compile(mode=mode, fullgraph=False)
        # The decoder is compiled without CUDA graphs: a batch's images are decoded one by one
        # and kept, and a graph's replay would overwrite the image decoded before it.
        pipeline.vae.decoder.compile()
    pipeline.fast_path = fast
