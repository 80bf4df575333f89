"""AUTOMATIC1111's "infotext": the generation parameters shown under an image and stored in its PNG.

The text has up to three parts::

    a castle on a hill, (dramatic lighting:1.2)         <- prompt, may span several lines
    Negative prompt: blurry, lowres                      <- only when the negative prompt is set
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689

Rules, as AUTOMATIC1111's webui writes (`create_infotext` in modules/processing.py) and reads
(`parse_generation_parameters` in modules/infotext_utils.py) them, which this module follows so that
each side reads the other's files:

- The last line is a list of `Key: value` pairs joined by ", ". A value holding ",", ":" or a
  newline is written as a JSON string: `Lora hashes: "detail: 0123abcd, style: 4567ef01"`.
  We also quote a value that starts with a double quote or has surrounding spaces, which A1111
  would write bare and then misread; A1111 reads our quoted form back correctly.
- A key is a word character followed by word characters, spaces, "-" or "/" (so at least two
  characters). An unquoted value runs up to the next comma.
- The reader takes the last line as parameters only if at least three pairs are found in it;
  otherwise that line belongs to the prompt (a prompt such as "style: anime, mood: calm" must not
  be mistaken for parameters).
- The negative prompt starts at the first line that begins with "Negative prompt:" and runs up to
  the parameter line. Every prompt line is stripped of surrounding spaces, and so is the whole
  text, so such spaces do not survive a round trip (they do not in A1111 either).
- Keys come in A1111's order: Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash,
  Model, …, Denoising strength, Clip skip, …, then the extensions' keys, then Version.

`parse_infotext` remembers the order and the exact spelling of each value it read (in
`GenerationParameters.as_written`), so parse → format gives back the very same text, including
texts from older A1111 versions that ordered keys differently or wrote "CFG scale: 7.0".
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# One `Key: value` pair of the parameter line: a key, a colon, then either a JSON string or
# everything up to the next comma. It is the same grammar as A1111's reader, so we split a line
# exactly where it does.
_PAIR = re.compile(
    r"""
    \s*
    (?P<key>\w[\w\ \-/]+)
    :\s*
    (?P<value>"(?:\\.|[^\\"])+"|[^,]*)
    (?:,|$)
    """,
    re.VERBOSE,
)
_KEY = re.compile(r"\w[\w \-/]+")
_SIZE = re.compile(r"(\d+)x(\d+)")

# A1111 trusts the last line to be parameters only when it holds at least this many pairs.
_MIN_PAIRS_ON_PARAMETER_LINE = 3

# The order in which A1111 (v1.10) writes its keys. Keys it does not name itself (those of
# extensions and of `extra_generation_params`: Hires upscale, Lora hashes, TI hashes, …) go
# where _EXTENSIONS stands, in the order they were added.
_EXTENSIONS = "<extensions>"
_A1111_KEY_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
    _EXTENSIONS,
    "Version",
    "User",
)
_RANK = {key: rank for rank, key in enumerate(_A1111_KEY_ORDER)}


@dataclass
class GenerationParameters:
    """Everything an infotext can carry, typed.

    `sampler` is A1111's display name ("Euler a", "DPM++ 2M"); `schedule_type` its "Schedule
    type" ("Karras"; None when the sampler's own schedule was used). `extra` keeps every other key
    ("Clip skip", "Lora hashes", "Version", …) as text, in the order read. Fields that are None
    are left out of the text.

    `as_written` is filled by `parse_infotext`: the keys in the order they were read, each with
    its value exactly as it stood in the text (quotes included). `format_infotext` reuses a
    spelling while the field still holds the value it spells, so an unchanged parse formats back
    to the same text; leave it empty to get A1111's own order and spelling. It takes no part in
    equality. `to_dict()` gives the fields as plain JSON values, `GenerationParameters(**d)`
    builds them back.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    sampler: str | None = None
    schedule_type: str | None = None
    cfg_scale: float | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model_hash: str | None = None
    model: str | None = None
    denoising_strength: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    as_written: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The fields, `as_written` aside, as a JSON-ready dict."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "sampler": self.sampler,
            "schedule_type": self.schedule_type,
            "cfg_scale": self.cfg_scale,
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "model_hash": self.model_hash,
            "model": self.model,
            "denoising_strength": self.denoising_strength,
            "extra": dict(self.extra),
        }


# --- values -------------------------------------------------------------------------------------


def _read_int(text: str) -> int:
    return int(text)


def _read_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _read_size(text: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a WIDTHxHEIGHT size: {text!r}")
    return int(match.group(1)), int(match.group(2))


def _read_text(text: str) -> str:
    return text


def _format_number(value: float) -> str:
    """7 -> "7", 7.0 -> "7", 7.5 -> "7.5", 0.75 -> "0.75": integral values without ".0", as the
    numbers A1111's UI hands to its infotext."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# Key -> (field name, reader, writer) for the keys that have a field of their own. "Size" fills
# two fields, width and height, and is handled apart.
_TYPED: dict[str, tuple[str, Callable[[str], Any], Callable[[Any], str]]] = {
    "Steps": ("steps", _read_int, str),
    "Sampler": ("sampler", _read_text, str),
    "Schedule type": ("schedule_type", _read_text, str),
    "CFG scale": ("cfg_scale", _read_float, _format_number),
    "Seed": ("seed", _read_int, str),
    "Size": ("", _read_size, _format_size),
    "Model hash": ("model_hash", _read_text, str),
    "Model": ("model", _read_text, str),
    "Denoising strength": ("denoising_strength", _read_float, _format_number),
}


def _quote(value: str) -> str:
    """The value as it goes on the parameter line: bare, or a JSON string when bare would not read
    back (see the module docstring)."""
    needs_quotes = (
        any(char in value for char in ",:\n") or value.startswith('"') or value != value.strip()
    )
    return json.dumps(value, ensure_ascii=False) if needs_quotes else value


def _unquote(raw: str) -> str:
    """The value a `_PAIR` match stands for: a JSON string decoded, anything else as it is."""
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        try:
            decoded = json.loads(raw)
        except json.JSONDecodeError:
            return raw  # not valid JSON after all (A1111 keeps it as written too)
        if isinstance(decoded, str):
            return decoded
    return raw


# --- parsing ------------------------------------------------------------------------------------


def _add_line(text: str, line: str) -> str:
    # Joining like A1111 does: a newline only once something is there, so blank lines at the
    # start of a prompt vanish while blank lines inside it stay.
    return line if text == "" else f"{text}\n{line}"


def parse_infotext(text: str) -> GenerationParameters:
    """Read an infotext (the PNG `parameters` chunk), tolerant as A1111 is.

    Missing negative prompt, missing keys, unknown keys (kept in `extra`, in order) and a missing
    parameter line are all fine. A known key whose value does not read as its type
    ("Steps: many") is kept as text in `extra` rather than lost.
    """
    *lines, last_line = text.strip().split("\n")
    pairs = list(_PAIR.finditer(last_line))
    if len(pairs) < _MIN_PAIRS_ON_PARAMETER_LINE:
        lines.append(last_line)
        pairs = []

    prompt = negative_prompt = ""
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        if in_negative:
            negative_prompt = _add_line(negative_prompt, line)
        else:
            prompt = _add_line(prompt, line)

    as_written: dict[str, str] = {}
    typed: dict[str, Any] = {}
    extra: dict[str, str] = {}
    for pair in pairs:
        key, raw = pair.group("key"), pair.group("value")
        # A repeated key keeps its first place and its last value, as in A1111's dict.
        as_written[key] = raw
        value = _unquote(raw)
        typed.pop(key, None)
        extra.pop(key, None)
        if key in _TYPED:
            try:
                typed[key] = _TYPED[key][1](value)
                continue
            except ValueError:
                pass  # keep the text in `extra` instead of dropping it
        extra[key] = value

    fields: dict[str, Any] = {}
    for key, value in typed.items():
        if key == "Size":
            fields["width"], fields["height"] = value
        else:
            fields[_TYPED[key][0]] = value
    return GenerationParameters(
        prompt=prompt,
        negative_prompt=negative_prompt,
        extra=extra,
        as_written=as_written,
        **fields,
    )


# --- formatting ---------------------------------------------------------------------------------


def _values(params: GenerationParameters) -> dict[str, tuple[Any, Callable[[str], Any], str]]:
    """Key -> (value, reader of its text, canonical text) for every key to write, typed fields in
    A1111's order first, then `extra` in its order."""
    if (params.width is None) != (params.height is None):
        raise ValueError(
            f"width and height must be both set or both None, got width={params.width!r}, "
            f"height={params.height!r}"
        )
    values: dict[str, tuple[Any, Callable[[str], Any], str]] = {}
    for key, (name, read, write) in _TYPED.items():
        value: Any
        if key == "Size":
            value = None if params.width is None else (params.width, params.height)
        else:
            value = getattr(params, name)
        if value is not None:
            values[key] = (value, read, write(value))

    for key, value in params.extra.items():
        if not isinstance(key, str) or _KEY.fullmatch(key) is None:
            raise ValueError(
                f"extra key {key!r} cannot be read back from an infotext: a key is a letter, "
                "digit or '_' followed by one or more letters, digits, '_', spaces, '-' or '/'"
            )
        if not isinstance(value, str):
            raise ValueError(f"extra[{key!r}] must be a str, got {type(value).__name__}")
        if key in values:
            raise ValueError(
                f"extra key {key!r} is also set as a field of GenerationParameters; set only one"
            )
        values[key] = (value, _read_text, value)
    return values


def _rank(key: str) -> int:
    return _RANK.get(key, _RANK[_EXTENSIONS])


def _key_order(keys: Iterable[str], written_order: Iterable[str]) -> list[str]:
    """The keys in the order they were read, each key not read placed where A1111 would put it:
    right after the last key that A1111 writes before it (or first, if there is none)."""
    keys = list(keys)
    order = [key for key in written_order if key in keys]
    for key in sorted((key for key in keys if key not in order), key=_rank):  # stable sort
        rank = _rank(key)
        earlier = [i for i, other in enumerate(order) if _rank(other) <= rank]
        order.insert(earlier[-1] + 1 if earlier else 0, key)
    return order


def _spelling(
    key: str, value: Any, read: Callable[[str], Any], text: str, as_written: Mapping[str, str]
) -> str:
    """The text read for `key` if it still stands for `value`, else the canonical text."""
    raw = as_written.get(key)
    if raw is not None:
        try:
            if read(_unquote(raw)) == value:
                return raw
        except ValueError:
            pass  # the old text is not of this key's type: write the new value
    return _quote(text)


def format_pairs(pairs: Mapping[str, str]) -> str:
    """`Key: value` pairs joined by ", ", each value quoted as on the parameter line: the text
    A1111 writes for postprocessing (its `postprocessing` and `extras` PNG chunks, e.g.
    "Postprocess upscale by: 2, Postprocess upscaler: Lanczos")."""
    return ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items())


def format_infotext(params: GenerationParameters) -> str:
    """Write `params` as A1111 does: prompt, "Negative prompt: …" line when there is one, and
    the parameter line, whole text stripped.

    Raises ValueError when width is set without height (or the reverse), or when an `extra` key
    could not be read back or duplicates a typed field.
    """
    values = _values(params)
    pairs = ", ".join(
        f"{key}: {_spelling(key, *values[key], params.as_written)}"
        for key in _key_order(values, params.as_written)
    )
    negative = (
        f"\n{NEGATIVE_PROMPT_PREFIX} {params.negative_prompt}" if params.negative_prompt else ""
    )
    return f"{params.prompt}{negative}\n{pairs}".strip()
