"""The judge tables docs/dali-tiny.md shows for a training run beside another file: the rows,
how a figure is written, and the table read back from the docs (for the record tests)."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Table rows, top to bottom: the row's name in the docs → the judge's figure.
ROWS = {
    "median IoU": "median_iou",
    "IoU ≥ 0.7": "iou_at_least_0.7",
    "shape": "shape",
    "colour": "color",
    "position (v2: or relation)": "position",
    "size": "size",
    "style": "style",
    "all attributes": "all_attributes",
    "flat background": "flat",
    "detector: shape": "detector_shape",
}


def docs_table(heading: str) -> dict[str, list[str]]:
    """Row name → its cells, of the first table under `heading` in docs/dali-tiny.md."""
    text = (DOCS / "dali-tiny.md").read_text()
    section = text[text.index(heading) :]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                              for line in lines[2 : 2 + len(ROWS)])}  # fmt: skip


def shown(figures: dict[str, float], name: str) -> str:
    """A figure as the docs write it: IoU to 3 places, a share in per cent, absent → ""."""
    if name not in figures:
        return ""
    value = figures[name]
    return f"{value:.3f}" if name == "median_iou" else f"{100 * value:.1f} %"
