"""AUTOMATIC1111's prompt syntax: attention weights, BREAK and extra-network tags.

Pure Python (no torch): the engine turns the result into token weights. Written here from the
syntax's documented behaviour (A1111's wiki and its `parse_prompt_attention` docstring); no code
was taken from A1111.

`parse_prompt(text)` returns a list of `Segment(text, weight)` and `BREAK` markers
(`PromptPart = Segment | Break`). The rules, in A1111's terms:

- Plain text has weight 1.0.
- `(x)` multiplies the weight of x by 1.1, `[x]` by 1/1.1 (A1111 multiplies by the float
  `1 / 1.1`, not divides by 1.1; we do the same, so `[x]` is 0.9090909090909091).
- `(x:w)` multiplies the weight of x by w instead of 1.1. The weight is `:`, optional spaces,
  an optional sign, digits and dots, optional spaces, then `)`: `(x: 1.5 )` and `(x:-1)` are
  weights, `(x:1e2)` is not.
- Nesting multiplies, innermost bracket first, as floats: `((x))` is 1.1 * 1.1 =
  1.2100000000000002 and `((x:1.2) y)` gives x 1.2 * 1.1. Weights are not rounded.
- A malformed weight is not a weight: `(x:abc)` is the text `x:abc` with the round-bracket
  multiplier 1.1 (the `:` and what follows stay in the text). A weight A1111 matches but
  cannot read as a number (`(x:1.2.3)`, `(x:.)`) makes A1111 raise ValueError; here it is
  treated the same way as `(x:abc)`: text `x:1.2.3`, weight 1.1.
- A weight with no open round bracket (`a:1.5)`) is kept as text, including its `)`.
- An unclosed `(` or `[` applies its multiplier (1.1 or 1/1.1) to everything after it, up to the
  end of the prompt. As in A1111, the unclosed round brackets are applied first, then the
  unclosed square brackets (the order decides the float rounding of `[a (b`).
- A stray `)` or `]` (nothing open of its kind) is kept as text. A `]` never closes a `(`, nor
  a `)` a `[`: `(a]` is the text `a]` at 1.1.
- Escapes: `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` give the literal `(`, `)`, `[`, `]`, `\\`.
  A backslash before any other character stays as it is (`a\\b` stays `a\\b`). A1111 differs
  here: it drops such a lone backslash (`a\\b` becomes `ab`); we keep it so that no character
  the user typed disappears.
- `BREAK`, in capitals and as a word of its own (`\\bBREAK\\b`: `a BREAK b`, `a,BREAK,b`, but
  not `aBREAK` or `break`), ends the current 75-token chunk. It becomes the `BREAK` marker and
  the whitespace around it is dropped (`a BREAK b` → `a`, BREAK, `b`). A1111 gives it as the
  pair `("BREAK", -1)` and multiplies that -1 by enclosing brackets, so that its `(a BREAK b)`
  turns BREAK into the word "BREAK" with weight -1.1; here a BREAK inside brackets is still a
  BREAK. BREAK is only found inside plain text: `\\BREAK` or `(x)BREAK` are BREAKs too, because
  the backslash and the bracket end the text before it.
- Adjacent segments with exactly equal weights are merged (`(a)(b)` → `ab` at 1.1); empty
  segments are dropped (A1111 keeps the empty text it finds on each side of a BREAK; those give
  no tokens). A prompt that leaves nothing at all gives `[Segment("", 1.0)]`; a prompt of only
  BREAKs gives the markers alone.

When every weight is 1.0 and there is no BREAK, the result is a single segment: the prompt with
its brackets and escapes resolved (a prompt without syntax comes back unchanged, whitespace
included), so the engine can encode it exactly as a plain prompt.

`extract_extra_networks(prompt)` removes extra-network tags `<kind:name[:arg…]>` (kind: one or
more word characters; the rest: anything up to the first `>`, at least one character, split at
every `:`) and returns them as `ExtraNetwork(kind, name, args)` in prompt order. Every kind is
extracted, known or not (`lora`, `lyco`, `hypernet`, …), as A1111 does before it skips unknown
kinds. Only the tag is removed: the spaces and commas around it stay. The arguments are kept as
written (`"0.8"`, `"te=0.5"`): their meaning depends on the kind.

Not here: A1111's prompt editing (`[a:b:when]`, `[a:when]`, `[a::when]`) and alternation
(`[a|b]`), which A1111 resolves per sampling step before this parser runs. Given to
`parse_prompt`, such text is read with the rules above (`[a:b:10]` is the text `a:b:10` at
1/1.1), as A1111 would read it if its step scheduler had left it alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "BREAK",
    "Break",
    "ExtraNetwork",
    "PromptPart",
    "Segment",
    "extract_extra_networks",
    "parse_prompt",
]

ROUND_MULTIPLIER: Final = 1.1
SQUARE_MULTIPLIER: Final = 1 / 1.1


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of prompt text and the attention weight of all of its tokens."""

    text: str
    weight: float


@dataclass(frozen=True, slots=True)
class Break:
    """The `BREAK` keyword: the text encoder starts a new 75-token chunk here.

    Use the `BREAK` instance; every `Break()` equals it.
    """

    def __repr__(self) -> str:
        return "BREAK"


BREAK: Final = Break()

PromptPart: TypeAlias = Segment | Break


@dataclass(frozen=True, slots=True)
class ExtraNetwork:
    """An extra-network tag: `<lora:name:0.8>` is `ExtraNetwork("lora", "name", ("0.8",))`."""

    kind: str
    name: str
    args: tuple[str, ...]


# One token per match. Order matters: escapes before the lone backslash, the full weight
# `:w)` before the lone `:`.
_TOKEN = re.compile(
    r"""
    \\(?P<escaped>[()\[\]\\])          # \( \) \[ \] \\  -> the literal character
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))   # :1.5)  closes a round bracket
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+ | : | \\)   # plain text, a lone ':' or a lone backslash
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(slots=True)
class _Piece:
    """A segment under construction: its weight changes as enclosing brackets close."""

    text: str
    weight: float = 1.0


def parse_prompt(text: str) -> list[PromptPart]:
    """Split an A1111 prompt into weighted segments and BREAK markers (see the module doc)."""
    parts: list[_Piece | Break] = []
    round_starts: list[int] = []  # index in `parts` where each open bracket starts
    square_starts: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for part in parts[start:]:
            if isinstance(part, _Piece):  # brackets do not weigh BREAK
                part.weight *= factor

    def add_text(chunk: str) -> None:
        for i, piece in enumerate(_BREAK_WORD.split(chunk)):
            if i > 0:
                parts.append(BREAK)
            parts.append(_Piece(piece))

    for match in _TOKEN.finditer(text):
        kind = match.lastgroup
        token = match.group(0)
        if kind == "escaped":
            parts.append(_Piece(match.group("escaped")))
        elif kind == "open":
            (round_starts if token == "(" else square_starts).append(len(parts))
        elif kind == "weight" and round_starts:
            try:
                factor = float(match.group("number"))
            except ValueError:  # digits and dots that are no number: "1.2.3", "."
                add_text(token[:-1])
                factor = ROUND_MULTIPLIER
            scale_from(round_starts.pop(), factor)
        elif kind == "close" and token == ")" and round_starts:
            scale_from(round_starts.pop(), ROUND_MULTIPLIER)
        elif kind == "close" and token == "]" and square_starts:
            scale_from(square_starts.pop(), SQUARE_MULTIPLIER)
        else:  # text, a lone ':' or '\\', a stray close, a weight with no '(' open
            add_text(token)

    for start in round_starts:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_starts:
        scale_from(start, SQUARE_MULTIPLIER)

    result: list[PromptPart] = []
    for part in parts:
        if isinstance(part, Break):
            result.append(part)
        elif part.text:
            last = result[-1] if result else None
            if isinstance(last, Segment) and last.weight == part.weight:
                result[-1] = Segment(last.text + part.text, part.weight)
            else:
                result.append(Segment(part.text, part.weight))
    return result or [Segment("", 1.0)]


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove the `<kind:name[:arg…]>` tags from a prompt; return the text left and the tags."""
    found: list[ExtraNetwork] = []

    def take(match: re.Match[str]) -> str:
        name, *args = match.group(2).split(":")
        found.append(ExtraNetwork(match.group(1), name, tuple(args)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), found
