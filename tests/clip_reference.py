"""The reference CLIP tokenizer: transformers' `CLIPTokenizer` built from OpenAI's BPE file.

Hugging Face CLIP repos ship `vocab.json` + `merges.txt`; this writes them from the shipped
`bpe_simple_vocab_16e6.txt.gz` (test code, using transformers' own byte table) so the
reference needs no download.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import torch

from sd_core.tokenizer import DEFAULT_BPE_FILE, NUM_MERGES


def write_hf_files(directory: Path) -> None:
    """vocab.json + merges.txt as Hugging Face CLIP repos ship them, from OpenAI's file."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    with gzip.open(DEFAULT_BPE_FILE, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : NUM_MERGES + 1]
    byte_symbols = list(bytes_to_unicode().values())
    symbols = byte_symbols + [s + "</w>" for s in byte_symbols]
    symbols += ["".join(m.split(" ")) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {s: i for i, s in enumerate(symbols)}
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )


def hf_tokenizer(directory: Path) -> Any:
    """transformers.CLIPTokenizer over files written into `directory`, checked to be whole.

    `CLIPTokenizerFast(vocab_file=..., merges_file=...)` silently yields a 2-token vocabulary in
    transformers 5.x; only a reference that loaded all 49,408 tokens is trusted.
    """
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    write_hf_files(directory)
    reference = transformers.CLIPTokenizer.from_pretrained(directory, model_max_length=77)
    assert len(reference) == 49408
    assert reference.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    return reference


def reference_encoding(
    reference: Any, chunks: list[list[int]], weights: list[list[float]], clip_skip: int = 1
) -> torch.Tensor:
    """Each 77-id chunk through transformers, weighted token by token, scaled back to its mean,
    concatenated: (1, 77·n, width)."""
    out = []
    with torch.inference_mode():
        for ids, w in zip(chunks, weights, strict=True):
            result = reference(input_ids=torch.tensor([ids]), output_hidden_states=True)
            z = reference.final_layer_norm(result.hidden_states[-clip_skip])[0]
            weighted = z * torch.tensor(w)[:, None]
            out.append(weighted * (z.mean() / weighted.mean()))
    return torch.cat(out).unsqueeze(0)
