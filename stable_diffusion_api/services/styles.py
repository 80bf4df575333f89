"""Prompt styles: named snippets of prompt and negative prompt, kept in `styles.csv`.

The file is AUTOMATIC1111's: a CSV with a header row naming the columns `name`, `prompt` and
`negative_prompt` (other columns are ignored), one style a row, in the data directory
(`DALI_DATA_DIR/styles.csv`, so A1111's own file can be copied in as it is). A missing file
means no styles. Rows that cannot be used (no name, a name given twice) are left out and
reported in the log, each with its line number; a file without those columns has no styles and
is reported the same way. The file is read again whenever it changes on disk.

Applying a style to a prompt: a style's text containing `{prompt}` has the user's prompt put
in its place; any other style text is appended after ", " (or is the whole prompt when the
prompt is empty). The same goes for the negative prompt. Several styles apply in the order
named. A generation request's `styles` are applied by the service before the request's params
are made, so the stored (and shown, and written into the PNG) prompt is the expanded one.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stable_diffusion_api.errors import InvalidField

log = logging.getLogger(__name__)

STYLES_FILE = "styles.csv"
PLACEHOLDER = "{prompt}"
COLUMNS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def apply_text(style_text: str, text: str) -> str:
    """One style's text applied to a prompt (see the module docstring)."""
    if not style_text:
        return text
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    if not text:
        return style_text
    return f"{text}, {style_text}"


def parse_styles(text: str) -> tuple[list[Style], list[str]]:
    """The styles of a `styles.csv` text, and a message for each row left out."""
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    header = [name.strip() for name in reader.fieldnames or []]
    if not text.strip():
        return [], []
    if "name" not in header or not {"prompt", "negative_prompt"} & set(header):
        return [], [f"the header row must name the columns {', '.join(COLUMNS)}; it has {header}"]
    reader.fieldnames = header
    styles: dict[str, Style] = {}
    problems = []
    for row in reader:
        line = reader.line_num
        name = (row.get("name") or "").strip()
        if not name:
            if any((value or "").strip() for value in row.values() if isinstance(value, str)):
                problems.append(f"line {line}: the style has no name")
            continue
        if name in styles:
            problems.append(f"line {line}: a second style named {name!r} (the first is kept)")
            continue
        styles[name] = Style(
            name, (row.get("prompt") or "").strip(), (row.get("negative_prompt") or "").strip()
        )
    return list(styles.values()), problems


class StyleLibrary:
    """The styles of one `styles.csv`, read again when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._styles: list[Style] = []

    @classmethod
    def under(cls, data_dir: Path) -> StyleLibrary:
        return cls(data_dir / STYLES_FILE)

    def all(self) -> list[Style]:
        try:
            stat = self.path.stat()
        except OSError:
            return []  # no file: no styles
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                try:
                    text = self.path.read_text(encoding="utf-8-sig")
                except (OSError, UnicodeDecodeError) as exc:
                    self._styles, problems = [], [f"the file cannot be read: {exc}"]
                else:
                    self._styles, problems = parse_styles(text)
                for problem in problems:
                    log.warning("styles file %s: %s", self.path, problem)
                self._stamp = stamp
            return list(self._styles)

    def find(self, names: Iterable[str], field: str = "styles") -> list[Style]:
        """The styles named, in order; InvalidField naming `field` for a name not in the file."""
        known = {style.name: style for style in self.all()}
        found = []
        for index, name in enumerate(names):
            style = known.get(name)
            if style is None:
                allowed = ", ".join(sorted(known)) or f"none: no styles in {self.path.name}"
                raise InvalidField(f"{field}.{index}", name, f"installed styles: {allowed}")
            found.append(style)
        return found

    def apply(
        self, names: Iterable[str], prompt: str, negative_prompt: str, field: str = "styles"
    ) -> tuple[str, str]:
        """(prompt, negative prompt) with the styles named applied, in order."""
        for style in self.find(names, field):
            prompt = apply_text(style.prompt, prompt)
            negative_prompt = apply_text(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt
