"""What the built-in model (dali-tiny) understands, and a check that says when a prompt is outside it.

The built-in model was trained on two sentence patterns only (docs/dali-tiny.md)::

    a [small |large ]<color> [filled |outline ]<shape>[ in the <position>] on a <background> background
    a [small ]<color> [filled |outline ]<shape> <relation> a [small ]<color> [filled |outline ]<shape>
        on a <background> background                  relation: left of | right of | above | below

Its text encoder still reads any words, so "a photo of a cat" gives an image: a shape guessed
from the few words it knows. Nothing would tell the user why. `prompt_warning` is that message,
for the engine's result warnings (CLI, REST, pages, A1111, Gradio) and for the service's answer
at submission; `SUGGESTIONS` are example prompts for the prompt box.

Pure Python (no torch), so every layer may import it. The word lists are the training data's
(`training/shapes.py`; a test keeps the two equal).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sd_core.prompt_parser import Break, extract_extra_networks, parse_prompt

# The model's name in its checkpoint's `dali_config` (ModelConfig.name): the pipeline's key.
MODEL_NAME = "dali-tiny"

COLORS: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
)
BACKGROUNDS: tuple[str, ...] = (*COLORS, "gray")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")  # no word: medium
POSITIONS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right", "center")
STYLES: tuple[str, ...] = ("filled", "outline")  # no word: filled
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

PATTERN = (
    "a [small|large] <color> [filled|outline] <shape> [in the <position>] on a <background>"
    " background"
)
PAIR_PATTERN = (
    "a [small] <color> [filled|outline] <shape> <left of|right of|above|below>"
    " a [small] <color> [filled|outline] <shape> on a <background> background"
)

SUGGESTIONS: tuple[str, ...] = (
    "a red circle on a blue background",
    "a small yellow triangle in the bottom right on a gray background",
    "a large green outline square in the top left on a white background",
    "a red circle left of a blue square on a white background",
    "a small black outline triangle above a purple circle on a yellow background",
)


def _alternatives(words: tuple[str, ...]) -> str:
    return "|".join(re.escape(word) for word in words)


def _thing(n: str, sizes: tuple[str, ...]) -> str:
    """One object: article, optional size, colour, optional style, shape (groups end in `n`)."""
    return (
        rf"a (?:(?P<size{n}>{_alternatives(sizes)}) )?(?P<color{n}>{_alternatives(COLORS)})"
        rf" (?:(?P<style{n}>{_alternatives(STYLES)}) )?(?P<shape{n}>{_alternatives(SHAPES)})"
    )


_BACKGROUND = rf" on a (?P<background>{_alternatives(BACKGROUNDS)}) background"
_SENTENCE = re.compile(
    _thing("", SIZES) + rf"(?: in the (?P<position>{_alternatives(POSITIONS)}))?" + _BACKGROUND
)
# Two objects: small or medium (no "large"), of two colours, neither the background's.
_PAIR = re.compile(
    _thing("1", ("small",)) + rf" (?P<relation>{_alternatives(RELATIONS)}) "
    + _thing("2", ("small",)) + _BACKGROUND
)  # fmt: skip
_KNOWN_WORDS = frozenset(
    {"a", "in", "the", "on", "background"}
    | {
        word
        for phrase in (*COLORS, *BACKGROUNDS, *SHAPES, *SIZES, *POSITIONS, *STYLES, *RELATIONS)
        for word in phrase.split()
    }
)


def _understood(text: str) -> bool:
    """Whether `text` (already read: lower case, single spaces) is a sentence of the grammar."""
    one = _SENTENCE.fullmatch(text)
    if one is not None:
        return one["color"] != one["background"]
    two = _PAIR.fullmatch(text)
    if two is None:
        return False
    colours = {two["color1"], two["color2"]}
    return len(colours) == 2 and two["background"] not in colours


@dataclass(frozen=True)
class Reading:
    """A prompt as the built-in model reads it: `text` with the attention syntax, extra-network
    tags and BREAKs taken out, lower case, single spaces, no end punctuation; `understood`
    when it is a sentence of the pattern; `unknown` the words the model was never taught."""

    text: str
    understood: bool
    unknown: tuple[str, ...]


def read_prompt(prompt: str) -> Reading:
    """How the built-in model reads `prompt` (see `Reading`)."""
    untagged, _ = extract_extra_networks(prompt)
    plain = " ".join(part.text for part in parse_prompt(untagged) if not isinstance(part, Break))
    text = " ".join(plain.lower().split()).strip(" .,;!")
    understood = _understood(text)
    words = re.findall(r"[a-z]+", text)
    unknown = tuple(dict.fromkeys(word for word in words if word not in _KNOWN_WORDS))
    return Reading(text, understood, unknown)


def prompt_warning(prompt: str) -> str | None:
    """None when the built-in model understands `prompt`; else a warning for the user that
    says why the image will not show what was asked, and what the model does understand."""
    reading = read_prompt(prompt)
    if reading.understood:
        return None
    if not reading.text:
        why = "An empty prompt gives a random shape:"
    elif reading.unknown:
        words = ", ".join(f"'{word}'" for word in reading.unknown[:8])
        more = " …" if len(reading.unknown) > 8 else ""
        why = f"It was never taught {words}{more}, so it will draw a shape it guesses:"
    else:
        why = "It knows these words but not in this order or combination, so it will guess:"
    return (
        "The built-in model only draws one or two shapes on a plain background. "
        f"{why} write '{PATTERN}' or '{PAIR_PATTERN}' — colors: {', '.join(COLORS)}; shapes:"
        f" {', '.join(SHAPES)}; positions: {', '.join(POSITIONS)}; two shapes differ in color;"
        f" backgrounds: the colors or gray, not a shape's color. For example '{SUGGESTIONS[0]}'"
        f" or '{SUGGESTIONS[3]}'."
    )


def model_warnings(model_name: str, prompt: str) -> tuple[str, ...]:
    """The warnings a run of the model called `model_name` (its `ModelConfig.name`) gives
    `prompt`: the built-in model's note on a prompt outside its grammar, none for any other
    model (an SD checkpoint reads free text)."""
    if model_name != MODEL_NAME:
        return ()
    warning = prompt_warning(prompt)
    return (warning,) if warning else ()
