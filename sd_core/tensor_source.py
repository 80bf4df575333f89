"""Reading the tensors of a checkpoint file safely, one tensor at a time.

`.safetensors` files are parsed here (8-byte header length, JSON header, raw data) and read
with plain file reads; `.ckpt`/`.pt` files go through `torch.load(weights_only=True)`, which
refuses any pickle that would run code. `sd_core.checkpoint` builds the models from this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason in words."""


def check_path(path: str | Path, kind: str = "checkpoint") -> Path:
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{kind} {str(path)!r} does not exist")
    if not p.is_file():
        raise CheckpointError(f"{kind} {str(path)!r} is not a file")
    if p.suffix.lower() not in SUFFIXES:
        raise CheckpointError(
            f"{kind} {str(path)!r} has suffix {p.suffix!r}; allowed: {', '.join(SUFFIXES)}"
        )
    return p


SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
MAX_HEADER_BYTES = 100 * 2**20


def safe_torch_load(path: Path, kind: str = "checkpoint") -> object:
    """`torch.load(weights_only=True)` of a .ckpt/.pt file, its failures as CheckpointError.

    torch's safe unpickler refuses any object that would import code; the error then says so
    (and names the global it refused), as it does for a damaged or foreign file. `kind` names
    the file in messages ("checkpoint", "LoRA", "embedding", "VAE").
    """
    import pickle
    import zipfile

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's safe unpickler names an "Unsupported global" when the file asks for code
        # it will not import; other failures are damaged, foreign or hand-made pickles.
        text = str(e)
        lines = [ln.strip() for ln in text.split("WeightsUnpickler error:")[-1].splitlines()]
        detail = next((ln for ln in lines if "unsupported global" in ln.lower()), "")
        detail = detail or next((ln for ln in lines if ln), type(e).__name__)
        if "unsupported global" in text.lower():
            raise CheckpointError(
                f"{kind} {str(path)!r} was refused: it holds objects other than "
                f"tensors (loading it could run code); convert it to .safetensors ({detail})"
            ) from e
        raise CheckpointError(
            f"{kind} {str(path)!r} is corrupt or truncated, or not a torch file; "
            f"it was refused without running anything ({detail})"
        ) from e
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        IndexError,
        KeyError,
    ) as e:
        raise CheckpointError(
            f"{kind} {str(path)!r} is corrupt or truncated ({type(e).__name__}: {e})"
        ) from e


class TensorSource:
    """Access to the tensors of one checkpoint file, one tensor at a time.

    safetensors are parsed here (8-byte header length, JSON header, raw data) and each tensor is
    read with plain file reads, not a memory map: pages of the file then never count against the
    process, so converting fp16 → fp32 while loading costs the target size plus one tensor. A
    .ckpt is loaded whole with weights_only=True and its tensors are handed out (and dropped)
    one by one.
    """

    def __init__(self, path: str | Path, kind: str = "checkpoint") -> None:
        self.kind = kind
        self.path = check_path(path, kind)
        self.metadata: dict[str, str] = {}
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        self._data_start = 0
        self._tensors: dict[str, Tensor] | None = None
        if self.path.suffix.lower() == ".safetensors":
            self._open_safetensors()
        else:
            self._open_pickle()

    def _fail(self, why: str) -> CheckpointError:
        return CheckpointError(
            f"{self.kind} {str(self.path)!r} is not a valid safetensors file: {why}"
        )

    def _open_safetensors(self) -> None:
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise self._fail("it is shorter than its 8-byte header length")
            header_len = int.from_bytes(head, "little")
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                # Not the number itself: it is the file's first 8 bytes, which may be anything.
                raise self._fail(f"its first 8 bytes are no header length for a {size}-byte file")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise self._fail(f"unreadable JSON header ({e})") from e
        if not isinstance(header, dict):
            raise self._fail("the header is not a JSON object")
        self._data_start = 8 + header_len
        data_size = size - self._data_start
        meta = header.pop("__metadata__", None) or {}
        self.metadata = {str(k): str(v) for k, v in meta.items()}
        for key, entry in header.items():
            try:
                dtype = entry["dtype"]
                shape = tuple(int(n) for n in entry["shape"])
                begin, end = (int(n) for n in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise self._fail(f"bad header entry for {key!r}") from e
            if dtype not in SAFETENSORS_DTYPES:
                raise self._fail(f"tensor {key!r} has unsupported dtype {dtype!r}")
            numel = 1
            for n in shape:
                numel *= n
            nbytes = numel * SAFETENSORS_DTYPES[dtype].itemsize
            if not 0 <= begin <= end <= data_size or end - begin != nbytes:
                raise self._fail(
                    f"tensor {key!r} lies outside the file (truncated or corrupt: "
                    f"bytes {begin}..{end} of {data_size})"
                )
            self._entries[key] = (dtype, shape, begin, end)
        self._keys = list(self._entries)

    def _open_pickle(self) -> None:
        obj = safe_torch_load(self.path, self.kind)
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping):
            raise CheckpointError(
                f"{self.kind} {str(self.path)!r} holds a {type(obj).__name__}, not a state dict"
            )
        self._tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
        self._keys = list(self._tensors)

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._tensors is None:
            return self._entries[key][1]
        return tuple(self._tensors[key].shape)

    def dtype_name(self, key: str) -> str:
        if self._tensors is None:
            code = self._entries[key][0]
            return DTYPE_NAMES.get(code, code.lower())
        return str(self._tensors[key].dtype).removeprefix("torch.")

    def pop(self, key: str) -> Tensor:
        """The tensor for `key` (a fresh CPU tensor); a .ckpt source forgets it as it goes."""
        if self._tensors is not None:
            return self._tensors.pop(key)
        dtype, shape, begin, end = self._entries[key]
        buffer = bytearray(end - begin)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if f.readinto(buffer) != len(buffer):
                raise self._fail(f"tensor {key!r} is cut short (file truncated)")
        if not buffer:
            return torch.empty(shape, dtype=SAFETENSORS_DTYPES[dtype])
        return torch.frombuffer(buffer, dtype=SAFETENSORS_DTYPES[dtype]).reshape(shape)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.shape(k) for k in self._keys}
