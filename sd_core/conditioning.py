"""Prompts as AUTOMATIC1111 reads them → the UNet's text conditioning.

A prompt is parsed (`sd_core.prompt_parser`: attention weights, BREAK, extra-network tags),
tokenized segment by segment, and cut into chunks of 75 tokens, each wrapped in BOS … EOS and
padded to 77. Each chunk goes through the text encoder on its own; the chunks' hidden states
are concatenated along the sequence (the UNet's cross-attention takes any context length), so
a prompt of n chunks gives (1, 77·n, width). The rules, as A1111 applies them:

- A chunk that fills up while a comma stands among its last `COMMA_BACKTRACK` (20) tokens ends
  after that comma; the tokens after it start the next chunk, so a phrase is not cut in two.
- `BREAK` ends the current chunk (padded to 77) and starts a new one.
- Per-token weights multiply the chunk's hidden states token by token; then the chunk is scaled
  back to its unweighted mean (`z · w`, times mean(z) / mean(z · w)). A1111 takes that mean
  over the whole batch; here it is taken per prompt, so an image made in a batch equals the same
  seed made alone. BOS, EOS and padding have weight 1.
- The prompt and the negative prompt are padded with chunks of the empty prompt to the same
  number of chunks.
- Extra-network tags (`<lora:name:0.8>`, `<hypernet:…>`) are removed from the text and never
  tokenized; until LoRA support lands each gives a warning naming it.

A prompt of at most 75 tokens with every weight 1.0 is one chunk holding exactly the ids the
plain tokenizer gives, and its hidden states are multiplied by 1.0 and scaled by a ratio of two
equal means (exactly 1.0), so its images are bit-identical to the plain encoding's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sd_core.prompt_parser import Segment, extract_extra_networks, parse_prompt
from sd_core.tokenizer import CLIPTokenizer

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class PromptChunks:
    """A prompt, tokenized: `ids` and `weights` are (n, 77), one row per chunk."""

    ids: list[list[int]]
    weights: list[list[float]]
    warnings: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def padded(self, count: int, empty: PromptChunks) -> PromptChunks:
        """These chunks followed by copies of `empty`'s one chunk, `count` in all."""
        extra = count - len(self)
        return PromptChunks(
            self.ids + empty.ids * extra, self.weights + empty.weights * extra, self.warnings
        )


def _wrap(
    tokenizer: CLIPTokenizer, ids: list[int], weights: list[float]
) -> tuple[list[int], list[float]]:
    """One chunk of at most 75 tokens → 77 ids (BOS, tokens, EOS, padding) and weights."""
    pad = CHUNK_TOKENS - len(ids)
    full_ids = [tokenizer.BOS, *ids, tokenizer.EOS] + [tokenizer.PAD] * pad
    return full_ids, [1.0, *weights, 1.0] + [1.0] * pad


def tokenize_prompt(tokenizer: CLIPTokenizer, prompt: str) -> PromptChunks:
    """The prompt's chunks of 77 ids with their weights (see the module docstring)."""
    text, networks = extract_extra_networks(prompt)
    warnings = tuple(
        f"<{n.kind}:{n.name}{''.join(':' + a for a in n.args)}> was removed from the prompt: "
        f"{n.kind} networks are not supported yet"
        for n in networks
    )
    comma = tokenizer.tokenize(",")[0]
    chunks_ids: list[list[int]] = []
    chunks_weights: list[list[float]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, last_comma
        wrapped_ids, wrapped_weights = _wrap(tokenizer, ids, weights)
        chunks_ids.append(wrapped_ids)
        chunks_weights.append(wrapped_weights)
        ids, weights, last_comma = [], [], -1

    for part in parse_prompt(text):
        if not isinstance(part, Segment):  # BREAK
            close()
            continue
        for token in tokenizer.tokenize(part.text):
            if len(ids) == CHUNK_TOKENS:
                if last_comma >= 0 and len(ids) - last_comma <= COMMA_BACKTRACK:
                    cut = last_comma + 1
                    rest_ids, rest_weights = ids[cut:], weights[cut:]
                    ids, weights = ids[:cut], weights[:cut]
                    close()
                    ids, weights = rest_ids, rest_weights
                else:
                    close()
            if token == comma:
                last_comma = len(ids)
            ids.append(token)
            weights.append(part.weight)
    if ids or not chunks_ids:
        close()
    return PromptChunks(chunks_ids, chunks_weights, warnings)


def encode_chunks(
    encoder: nn.Module, chunks: PromptChunks, clip_skip: int, device: torch.device
) -> Tensor:
    """(1, 77·n, width): each chunk encoded, weighted, its mean restored, then concatenated."""
    ids = torch.tensor(chunks.ids, dtype=torch.int64, device=device)
    hidden: Tensor = encoder(ids, clip_skip)  # (n, 77, width)
    weights = torch.tensor(chunks.weights, dtype=hidden.dtype, device=device)
    out = []
    for z, w in zip(hidden, weights, strict=True):
        original_mean = z.mean()
        z = z * w[:, None]
        out.append(z * (original_mean / z.mean()))
    return torch.cat(out).unsqueeze(0)


def encode_prompts(
    encoder: nn.Module,
    tokenizer: CLIPTokenizer,
    prompts: Sequence[str],
    clip_skip: int,
    device: torch.device,
) -> tuple[list[Tensor], tuple[str, ...]]:
    """Each prompt's (1, 77·n, width) conditioning, all with the same n (padded with empty
    chunks), and the warnings met on the way."""
    chunked = [tokenize_prompt(tokenizer, prompt) for prompt in prompts]
    count = max(len(c) for c in chunked)
    empty = tokenize_prompt(tokenizer, "")
    encoded = [encode_chunks(encoder, c.padded(count, empty), clip_skip, device) for c in chunked]
    return encoded, tuple(w for c in chunked for w in c.warnings)
