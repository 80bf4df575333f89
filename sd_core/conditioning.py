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
- Extra-network tags (`<lora:name:0.8>`, `<hypernet:…>`) are never tokenized: the pipeline
  takes them out and applies them first (`sd_core.extra_networks`); one that still reaches the
  encoder is removed with a warning naming it.
- Textual-inversion embeddings (`sd_core.embeddings`) are found in token space: each installed
  embedding's name is tokenized, and wherever that token sequence appears in a segment's
  tokens, the embedding's n vectors take its place (the placeholder id `EMBEDDING_PLACEHOLDER`
  in `ids`, the segment's weight in `weights`); the text encoder gets them as token
  embeddings, position embeddings added as for any token. Where names overlap the longest
  wins. An embedding never straddles two chunks: one that does not fit in what is left of the
  chunk closes it (padded) and starts the next. Only embeddings whose names appear are loaded;
  one that cannot be loaded, has another width than the text encoder (an SDXL one) or more
  than 75 vectors gives a warning, and its name stays plain text. One difference from A1111:
  an embedding moved to the next chunk by the comma rule keeps its vectors (A1111 leaves them
  behind at the old chunk's positions).

A prompt of at most 75 tokens with every weight 1.0 is one chunk holding exactly the ids the
plain tokenizer gives, and its hidden states are multiplied by 1.0 and scaled by a ratio of two
equal means (exactly 1.0), so its images are bit-identical to the plain encoding's. A prompt
with no embedding in it goes through the text encoder by its ids alone, as before embeddings
existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from sd_core.extra_networks import tag_text
from sd_core.prompt_parser import Segment, extract_extra_networks, parse_prompt
from sd_core.tensor_source import CheckpointError
from sd_core.tokenizer import CLIPTokenizer

if TYPE_CHECKING:
    from sd_core.clip import CLIPTextModel
    from sd_core.embeddings import Embedding
    from sd_core.file_library import FileLibrary, LibraryFile

CHUNK_TOKENS = 75
COMMA_BACKTRACK = 20
# The id written in `PromptChunks.ids` where an embedding's vectors go (A1111 writes 0 too); the
# text encoder never looks it up.
EMBEDDING_PLACEHOLDER = 0


class EmbeddingSlot(NamedTuple):
    """Where one embedding sits: chunk index, position in that chunk's 77 (BOS is 0)."""

    chunk: int
    position: int
    embedding: Embedding


class EmbeddingMatcher:
    """The installed embeddings' names in token space, for one encoding call.

    The folder is listed and the names tokenized once, here; an embedding is loaded (through
    the library, which keeps it) and checked only when its name is found in a prompt. The
    warnings of those that cannot be used collect in `warnings`, one per file.
    """

    def __init__(
        self, library: FileLibrary[Embedding], tokenizer: CLIPTokenizer, width: int
    ) -> None:
        self.library = library
        self.width = width
        self.warnings: list[str] = []
        self._candidates: dict[int, list[tuple[list[int], LibraryFile]]] = {}
        self._checked: dict[Path, Embedding | None] = {}
        for entry in library.files():
            ids = tokenizer.tokenize(entry.name)
            if ids:
                self._candidates.setdefault(ids[0], []).append((ids, entry))
        for candidates in self._candidates.values():  # longest name first (a stable sort)
            candidates.sort(key=lambda candidate: -len(candidate[0]))

    def match(self, tokens: Sequence[int], start: int) -> tuple[Embedding, int] | None:
        """The usable embedding whose name's tokens begin at `tokens[start]` (the longest such
        name) and how many tokens the name takes; None when there is none."""
        for ids, entry in self._candidates.get(tokens[start], ()):
            if list(tokens[start : start + len(ids)]) == ids:
                embedding = self._usable(entry)
                if embedding is not None:
                    return embedding, len(ids)
        return None

    def _usable(self, entry: LibraryFile) -> Embedding | None:
        if entry.path in self._checked:
            return self._checked[entry.path]
        embedding: Embedding | None = None
        why = ""
        try:
            embedding = self.library.load(entry)
        except (CheckpointError, OSError) as e:
            why = str(e)
        if embedding is not None and embedding.width != self.width:
            why = (
                f"its vectors have width {embedding.width} but this model's text encoder takes "
                f"{self.width} (an embedding made for another model family)"
            )
        elif embedding is not None and embedding.count > CHUNK_TOKENS:
            why = f"it has {embedding.count} vectors; at most {CHUNK_TOKENS} fit in a prompt chunk"
        if why:
            embedding = None
            self.warnings.append(
                f"embedding {entry.name!r} ({entry.path.name}) was not used and its name was "
                f"read as plain text: {why}"
            )
        self._checked[entry.path] = embedding
        return embedding


@dataclass(frozen=True)
class PromptChunks:
    """A prompt, tokenized: `ids` and `weights` are (n, 77), one row per chunk."""

    ids: list[list[int]]
    weights: list[list[float]]
    warnings: tuple[str, ...] = ()
    embedding_slots: tuple[EmbeddingSlot, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    def padded(self, count: int, empty: PromptChunks) -> PromptChunks:
        """These chunks followed by copies of `empty`'s one chunk, `count` in all."""
        extra = count - len(self)
        return PromptChunks(
            self.ids + empty.ids * extra,
            self.weights + empty.weights * extra,
            self.warnings,
            self.embedding_slots,
        )

    def embeddings_used(self) -> list[Embedding]:
        """The embeddings placed, each once, in the order they first appear."""
        return list(dict.fromkeys(slot.embedding for slot in self.embedding_slots))


def _wrap(
    tokenizer: CLIPTokenizer, ids: list[int], weights: list[float]
) -> tuple[list[int], list[float]]:
    """One chunk of at most 75 tokens → 77 ids (BOS, tokens, EOS, padding) and weights."""
    pad = CHUNK_TOKENS - len(ids)
    full_ids = [tokenizer.BOS, *ids, tokenizer.EOS] + [tokenizer.PAD] * pad
    return full_ids, [1.0, *weights, 1.0] + [1.0] * pad


def tokenize_prompt(
    tokenizer: CLIPTokenizer, prompt: str, embeddings: EmbeddingMatcher | None = None
) -> PromptChunks:
    """The prompt's chunks of 77 ids with their weights and, where `embeddings` finds names,
    the embeddings' slots (see the module docstring)."""
    text, networks = extract_extra_networks(prompt)
    # The pipeline takes the tags out and applies them (sd_core.extra_networks) before it
    # encodes; a tag that reaches this point is text-encoder-only use, where it cannot act.
    warnings = [
        f"{tag_text(n)} was removed from the prompt: the text encoder alone does not apply it"
        for n in networks
    ]
    warned_before = len(embeddings.warnings) if embeddings is not None else 0
    comma = tokenizer.tokenize(",")[0]
    chunks_ids: list[list[int]] = []
    chunks_weights: list[list[float]] = []
    slots: list[EmbeddingSlot] = []
    ids: list[int] = []
    weights: list[float] = []
    placed: list[tuple[int, Embedding]] = []  # (index in `ids`, embedding) of this chunk
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, placed, last_comma
        wrapped_ids, wrapped_weights = _wrap(tokenizer, ids, weights)
        slots.extend(EmbeddingSlot(len(chunks_ids), at + 1, e) for at, e in placed)
        chunks_ids.append(wrapped_ids)
        chunks_weights.append(wrapped_weights)
        ids, weights, placed, last_comma = [], [], [], -1

    for part in parse_prompt(text):
        if not isinstance(part, Segment):  # BREAK
            close()
            continue
        tokens = tokenizer.tokenize(part.text)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if len(ids) == CHUNK_TOKENS:
                if last_comma >= 0 and len(ids) - last_comma <= COMMA_BACKTRACK:
                    # The comma is a token of its own, so the cut never splits an embedding.
                    cut = last_comma + 1
                    rest_ids, rest_weights = ids[cut:], weights[cut:]
                    rest_placed = [(at - cut, e) for at, e in placed if at >= cut]
                    ids, weights = ids[:cut], weights[:cut]
                    placed = [(at, e) for at, e in placed if at < cut]
                    close()
                    ids, weights, placed = rest_ids, rest_weights, rest_placed
                else:
                    close()
            found = embeddings.match(tokens, position) if embeddings is not None else None
            if found is None:
                if token == comma:
                    last_comma = len(ids)
                ids.append(token)
                weights.append(part.weight)
                position += 1
                continue
            embedding, name_tokens = found
            if len(ids) + embedding.count > CHUNK_TOKENS:
                close()
            placed.append((len(ids), embedding))
            ids.extend([EMBEDDING_PLACEHOLDER] * embedding.count)
            weights.extend([part.weight] * embedding.count)
            position += name_tokens
    if ids or not chunks_ids:
        close()
    if embeddings is not None:
        warnings += embeddings.warnings[warned_before:]
    return PromptChunks(chunks_ids, chunks_weights, tuple(warnings), tuple(slots))


def encode_chunks(
    encoder: CLIPTextModel, chunks: PromptChunks, clip_skip: int, device: torch.device
) -> Tensor:
    """(1, 77·n, width): each chunk encoded, weighted, its mean restored, then concatenated.

    Without embedding slots the encoder looks the ids up itself; with them it gets the token
    embeddings of the ids with each embedding's vectors written over its slot."""
    ids = torch.tensor(chunks.ids, dtype=torch.int64, device=device)
    if chunks.embedding_slots:
        embeds = encoder.embeddings.token_embedding(ids)  # (n, 77, width)
        for slot in chunks.embedding_slots:
            vectors = slot.embedding.vectors.to(device=embeds.device, dtype=embeds.dtype)
            embeds[slot.chunk, slot.position : slot.position + len(vectors)] = vectors
        hidden: Tensor = encoder(ids, clip_skip, inputs_embeds=embeds)
    else:
        hidden = encoder(ids, clip_skip)  # (n, 77, width)
    weights = torch.tensor(chunks.weights, dtype=hidden.dtype, device=device)
    out = []
    for z, w in zip(hidden, weights, strict=True):
        original_mean = z.mean()
        z = z * w[:, None]
        out.append(z * (original_mean / z.mean()))
    return torch.cat(out).unsqueeze(0)


@dataclass(frozen=True)
class EncodedPrompts:
    """What `encode_prompts` gives: each prompt's (1, 77·n, width) conditioning (the same n
    for all), the warnings met, and the embeddings placed (each once, in order of first use)."""

    context: list[Tensor]
    warnings: tuple[str, ...] = ()
    embeddings_used: tuple[Embedding, ...] = ()


def encode_prompts(
    encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    prompts: Sequence[str],
    clip_skip: int,
    device: torch.device,
    embeddings: FileLibrary[Embedding] | None = None,
) -> EncodedPrompts:
    """Each prompt's (1, 77·n, width) conditioning, all with the same n (padded with empty
    chunks), the warnings met on the way and the embeddings of `embeddings` used."""
    matcher = None
    if embeddings is not None:
        matcher = EmbeddingMatcher(embeddings, tokenizer, encoder.config.width)
    chunked = [tokenize_prompt(tokenizer, prompt, matcher) for prompt in prompts]
    count = max(len(c) for c in chunked)
    empty = tokenize_prompt(tokenizer, "")
    encoded = [encode_chunks(encoder, c.padded(count, empty), clip_skip, device) for c in chunked]
    used = dict.fromkeys(e for c in chunked for e in c.embeddings_used())
    return EncodedPrompts(encoded, tuple(w for c in chunked for w in c.warnings), tuple(used))
