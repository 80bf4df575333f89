"""Textual-inversion embeddings, in the file layouts AUTOMATIC1111 users have.

An embedding is n learned vectors in the text encoder's token-embedding space (n × 768 for
SD v1.x). Its file's stem is its name; a prompt that spells the name gets the n vectors in its
place (`sd_core.conditioning` does the matching). Layouts read:

- A1111 `.pt`: `{"string_to_param": {"*": (n, width)}, "string_to_token": …, "name": …,
  "step": …}`; the dict under `string_to_param` must hold exactly one tensor.
- diffusers `learned_embeds.bin` / `.pt`: `{token: (width,)}`, a dict of a single tensor.
- `.safetensors`: `emb_params` (n, width), or a file of a single tensor.

A 1-D tensor is one vector. `.pt` and `.bin` files are read only through `safe_torch_load`
(torch's weights-only unpickler), which refuses any pickle that would import code;
`.safetensors` files through `TensorSource`. Whatever cannot be used raises `EmbeddingError`
naming the file and why. SDXL embeddings (`clip_l` + `clip_g`) are refused: SD v1.x has one
text encoder, and A1111 does not use them with SD v1.x either.

`short_hash` is the first 12 hex digits of the file's sha256: A1111's "TI hashes" value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from sd_core.file_library import FileLibrary
from sd_core.tensor_source import CheckpointError, TensorSource, safe_torch_load

SUFFIXES = (".pt", ".bin", ".safetensors")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KIND = "embedding"


class EmbeddingError(CheckpointError):
    """An embedding file that cannot be used, with the file and the reason in words."""


@dataclass(frozen=True)
class Embedding:
    """One textual-inversion embedding: `vectors` is (n, width) float32 on the CPU.

    Two embeddings are equal when name, path and file hash are (the vectors follow from them).
    """

    name: str
    path: Path
    vectors: Tensor = field(compare=False, repr=False)
    short_hash: str

    @property
    def count(self) -> int:
        """How many vectors (prompt tokens) it takes."""
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])


def _fail(path: Path, why: str) -> EmbeddingError:
    return EmbeddingError(f"{KIND} {str(path)!r} cannot be used: {why}")


def _pick_pickled(path: Path, data: object) -> Tensor:
    """The one tensor of an A1111 or diffusers layout loaded from a .pt / .bin file."""
    if not isinstance(data, Mapping):
        raise _fail(path, f"it holds a {type(data).__name__}, not an embedding's dict")
    where = "the file"
    if "string_to_param" in data:  # A1111
        data, where = data["string_to_param"], "its 'string_to_param'"
        if not isinstance(data, Mapping):
            raise _fail(path, f"{where} is not a dict of tensors")
    elif isinstance(data.get("emb_params"), Tensor):
        return data["emb_params"]
    tensors = {str(k): v for k, v in data.items() if isinstance(v, Tensor)}
    return tensors[_only_key(path, list(tensors), where)]


def _only_key(path: Path, keys: list[str], where: str) -> str:
    """The key of the one tensor among `keys`; EmbeddingError for none or several."""
    if {"clip_l", "clip_g"} <= set(keys):
        raise _fail(path, "it is an SDXL embedding (clip_l + clip_g); SD v1.x cannot use it")
    if not keys:
        raise _fail(path, f"{where} holds no tensor")
    if len(keys) > 1:
        names = ", ".join(repr(k) for k in keys[:6]) + (", …" if len(keys) > 6 else "")
        raise _fail(
            path, f"{where} holds {len(keys)} tensors ({names}); an embedding has exactly one"
        )
    return keys[0]


def _read_safetensors(path: Path) -> Tensor:
    source = TensorSource(path, KIND)  # CheckpointError for a corrupt file, named
    keys = source.keys()
    key = "emb_params" if "emb_params" in keys else _only_key(path, keys, "the file")
    return source.pop(key)


def _as_vectors(path: Path, tensor: Tensor) -> Tensor:
    """(n, width) float32 CPU from a 1-D or 2-D floating tensor."""
    if tensor.dtype not in FLOAT_DTYPES:
        raise _fail(path, f"its tensor has dtype {str(tensor.dtype).removeprefix('torch.')}")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise _fail(path, f"its tensor has shape {tuple(tensor.shape)}; expected (vectors, width)")
    vectors = tensor.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(vectors).all()):
        raise _fail(path, "its vectors hold NaN or infinite values")
    return vectors


def _load_pickle(path: Path) -> object:
    """`safe_torch_load`, with whatever else the weights-only unpickler raises on a damaged
    file (IndexError, KeyError, … from a malformed pickle stream) also an EmbeddingError:
    that unpickler imports no code, so nothing ran."""
    try:
        return safe_torch_load(path, KIND)
    except CheckpointError:
        raise
    except Exception as e:
        raise _fail(
            path, f"it is corrupt or not a torch file ({type(e).__name__}: {e}); nothing was run"
        ) from e


def load_embedding(path: str | Path) -> Embedding:
    """The embedding in `path` (.pt, .bin or .safetensors); EmbeddingError if unusable."""
    from sd_core.checkpoint import file_sha256

    p = Path(path)
    if p.suffix.lower() not in SUFFIXES:
        raise _fail(p, f"suffix {p.suffix!r}; allowed: {', '.join(SUFFIXES)}")
    if not p.is_file():
        raise _fail(p, "there is no such file")
    try:
        if p.suffix.lower() == ".safetensors":
            tensor = _read_safetensors(p)
        else:
            tensor = _pick_pickled(p, _load_pickle(p))
    except EmbeddingError:
        raise
    except CheckpointError as e:  # corrupt, truncated, or a pickle that would run code
        raise EmbeddingError(str(e)) from e
    return Embedding(
        name=p.stem, path=p, vectors=_as_vectors(p, tensor), short_hash=file_sha256(p)[:12]
    )


def embedding_library(directory: Path) -> FileLibrary[Embedding]:
    """The embeddings under `directory`, named by file stem, each loaded on first use."""
    return FileLibrary(Path(directory), SUFFIXES, load_embedding)
