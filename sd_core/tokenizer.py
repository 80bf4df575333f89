"""The CLIP byte-pair-encoding tokenizer that Stable Diffusion v1.x conditions on.

Text goes through four stages, each chosen to reproduce OpenAI CLIP's tokenizer (and
transformers' `CLIPTokenizer`, which SD v1.x pipelines use) id for id:

1. clean-up: `ftfy.fix_text` (mojibake, curly quotes, NFC, ...), HTML entities unescaped
   twice, runs of whitespace collapsed to one space, stripped, lowercased;
2. pre-tokenization: a regex splits the text into words, single digits, punctuation runs,
   English contractions and the two special-token strings; whitespace is dropped;
3. each word's UTF-8 bytes are mapped to printable unicode characters (GPT-2's reversible
   byte-to-unicode table), so the vocabulary never holds raw control bytes or spaces;
4. BPE: the word starts as single characters, the last one carrying the end-of-word marker
   `</w>`, and the adjacent pair with the lowest merge rank is merged until none applies.

The vocabulary has 49,408 entries: 256 byte characters, the same 256 with `</w>`, 48,894
merges, then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407. A text encoder input is
77 ids: BOS, at most 75 text ids, EOS, padded with EOS (49407) as SD v1.x was trained.
"""

from __future__ import annotations

import functools
import gzip
import html
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    import torch

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "clip"
DEFAULT_BPE_FILE = DATA_DIR / "bpe_simple_vocab_16e6.txt.gz"

START_TEXT = "<|startoftext|>"
END_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"

# OpenAI's merges file holds more merges than CLIP uses: the model's 49,408-entry vocabulary
# keeps only the first 49408 - 512 byte symbols - 2 special tokens of them.
NUM_MERGES = 49408 - 2 * 256 - 2

# Special tokens first so they survive intact; then contractions, letter runs, single digits
# (so numbers split digit by digit) and runs of anything else that is not whitespace.
_PRETOKENIZE = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")

# Distinct words seen by a long-running server are unbounded; past this the cache is reset.
_MAX_CACHED_WORDS = 200_000


def bytes_to_unicode() -> dict[int, str]:
    """Map every byte 0..255 to a printable unicode character, reversibly.

    Bytes that are already printable Latin-1 characters map to themselves; the other 68
    (control bytes, space, soft hyphen, ...) map to code points 256, 257, ... in byte order.
    The dict's insertion order is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def _read_text(path: Path) -> str:
    """The file's text, gunzipped when it ends in .gz."""
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _parse_merges(lines: Sequence[str], source: Path) -> list[tuple[str, str]]:
    """Merge rules "a b" → ("a", "b"); `lines` excludes the "#version" header."""
    merges = []
    for number, line in enumerate(lines, start=1):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(
                f"merges file {str(source)!r}, merge {number}: expected two symbols "
                f"separated by a space, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizer:
    """OpenAI CLIP's BPE tokenizer: text → token ids for the SD v1.x text encoder.

    Build it with `default()` (the vocabulary shipped in `data/clip/`), `from_bpe_file`
    (OpenAI's merges file) or `from_vocab_and_merges` (a Hugging Face repo's tokenizer files).
    """

    BOS: int = 49406
    EOS: int = 49407
    PAD: int = 49407
    max_length: int = 77

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]]) -> None:
        """`vocab` maps BPE symbols (byte-to-unicode characters, "</w>" on word ends) to ids;
        `merges` lists the pairs to merge, the most frequent (lowest rank) first."""
        for token, expected in ((START_TEXT, self.BOS), (END_TEXT, self.EOS)):
            if vocab.get(token) != expected:
                raise ValueError(
                    f"vocab maps {token!r} to {vocab.get(token)!r}; CLIP SD v1.x needs {expected}"
                )
        for first, second in merges:
            if first + second not in vocab:
                raise ValueError(
                    f"merge ({first!r}, {second!r}) makes {first + second!r}, "
                    "which is not in the vocab"
                )
        self.encoder = dict(vocab)
        self.decoder = {i: token for token, i in vocab.items()}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # ftfy takes ~0.1 s to import; only a tokenizer that is built pays for it.
        import ftfy

        self._fix_text: Callable[[str], str] = ftfy.fix_text
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @classmethod
    @functools.cache
    def default(cls) -> CLIPTokenizer:
        """The SD v1.x tokenizer from the shipped `data/clip/bpe_simple_vocab_16e6.txt.gz`;
        built once per process."""
        return cls.from_bpe_file(DEFAULT_BPE_FILE)

    @classmethod
    def from_bpe_file(cls, path: str | Path) -> CLIPTokenizer:
        """From OpenAI's merges file (`bpe_simple_vocab_16e6.txt.gz` or its unzipped .txt).

        The vocabulary is implied by the merges: the 256 byte characters, the same with
        `</w>`, each merge's result in rank order, then the two special tokens.
        """
        path = Path(path)
        lines = _read_text(path).split("\n")
        if len(lines) < NUM_MERGES + 1:
            raise ValueError(
                f"BPE file {str(path)!r} has {len(lines) - 1} merge lines; "
                f"CLIP needs at least {NUM_MERGES}"
            )
        merges = _parse_merges(lines[1 : NUM_MERGES + 1], path)
        symbols = list(bytes_to_unicode().values())
        symbols += [s + END_OF_WORD for s in symbols]
        symbols += [a + b for a, b in merges]
        symbols += [START_TEXT, END_TEXT]
        return cls({s: i for i, s in enumerate(symbols)}, merges)

    @classmethod
    def from_vocab_and_merges(cls, vocab_json: str | Path, merges_txt: str | Path) -> CLIPTokenizer:
        """From a Hugging Face repo's `vocab.json` (symbol → id) and `merges.txt` (one
        "a b" pair a line after a "#version" header)."""
        vocab_path, merges_path = Path(vocab_json), Path(merges_txt)
        vocab = json.loads(_read_text(vocab_path))
        if not isinstance(vocab, dict):
            raise ValueError(
                f"vocab_json {str(vocab_path)!r} must hold a JSON object of symbol → id, "
                f"got {type(vocab).__name__}"
            )
        lines = _read_text(merges_path).split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        lines = [line for line in lines if line.strip()]
        return cls(vocab, _parse_merges(lines, merges_path))

    def clean(self, text: str) -> str:
        """The text as CLIP sees it: fixed by ftfy, HTML-unescaped twice, whitespace runs
        collapsed to one space, stripped, lowercased."""
        text = html.unescape(html.unescape(self._fix_text(text)))
        return _WHITESPACE.sub(" ", text).strip().lower()

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word given as byte-to-unicode characters."""
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:], strict=False)
            best = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
            if best not in self.ranks:
                break
            # Merge every occurrence of the best pair, left to right, without overlaps.
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return [self.encoder[s] for s in symbols]

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of `text`, without BOS/EOS, not truncated. "a cat" → [320, 2368]."""
        ids: list[int] = []
        cache = self._cache
        for piece in _PRETOKENIZE.findall(self.clean(text)):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                if piece == START_TEXT:
                    piece_ids = [self.BOS]
                elif piece == END_TEXT:
                    piece_ids = [self.EOS]
                else:
                    word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                    piece_ids = self._bpe(word)
                if len(cache) >= _MAX_CACHED_WORDS:
                    cache.clear()
                cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def count_tokens(self, text: str) -> int:
        """How many ids `text` takes; more than `max_length - 2` (75) are cut by `encode`."""
        return len(self.tokenize(text))

    def encode(self, text: str) -> list[int]:
        """Exactly `max_length` (77) ids: BOS, the text's ids, EOS, then PAD to the end.

        Text longer than 75 ids is truncated to its first 75, so the EOS stays last.
        """
        ids = self.tokenize(text)[: self.max_length - 2]
        ids = [self.BOS, *ids, self.EOS]
        return ids + [self.PAD] * (self.max_length - len(ids))

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """`encode` of each text, stacked: int64 tensor of shape (len(texts), 77)."""
        import torch

        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got a single str")
        rows = [self.encode(text) for text in texts]
        return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), self.max_length)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of `ids`, with a space after each word end; invalid UTF-8 becomes U+FFFD.

        Words (letters only) separated by single spaces come back unchanged when already
        clean and lowercase, `decode(tokenize("a red cat")) == "a red cat"`; punctuation runs
        and digits are words of their own ("cat, 42" → "cat , 4 2"). `skip_special_tokens`
        drops BOS, EOS and PAD ids.
        """
        data = bytearray()
        for i in ids:
            i = int(i)
            if i not in self.decoder:
                raise ValueError(f"token id {i} is out of range 0..{len(self.decoder) - 1}")
            if skip_special_tokens and i in (self.BOS, self.EOS, self.PAD):
                continue
            symbol = self.decoder[i]
            word_end = symbol.endswith(END_OF_WORD)
            if word_end:
                symbol = symbol[: -len(END_OF_WORD)]
            data.extend(self.byte_decoder[c] for c in symbol)
            if word_end:
                data += b" "
        return data.decode("utf-8", errors="replace").strip()
