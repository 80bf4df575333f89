"""Generated images beside their ideal renders, as one PNG (issue 17's gallery).

Each cell is a pair: the generated image on the left, on the right the caption's ideal
rendering it was judged against (`ideal.fit_ideal`), with a 3-pixel bar below, green when
every attribute is right and IoU ≥ 0.7, red otherwise. Cells run left to right, top to
bottom, in the order of the held-out captions (the judge's JSON lists them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.judge.ideal import IdealFit, ideal_image
from training.judge.verdict import ALL, IOU_GOOD, Verdict
from training.shapes import Scene

_GAP = 6
_BAR = 3
_GOOD = (40, 170, 60)
_BAD = (210, 40, 40)


class Gallery:
    """Collects pairs (`add`) and writes the grid (`save`)."""

    def __init__(self, columns: int = 8, limit: int = 64) -> None:
        self.columns = columns
        self.limit = limit
        self.cells: list[np.ndarray] = []

    def add(self, scene: Scene, image: np.ndarray, fit: IdealFit, verdict: Verdict) -> None:
        """One cell: (H, W, 3) uint8 `image` of `scene` beside its ideal `fit` (ignored once
        `limit` cells are in)."""
        if len(self.cells) >= self.limit:
            return
        ideal = ideal_image(fit, scene.color, scene.background)
        good = verdict.iou >= IOU_GOOD and all(verdict.matches(scene)[a] for a in ALL)
        h, w, _ = image.shape
        cell = np.full((h + _BAR + 1, 2 * w + 2, 3), 255, dtype=np.uint8)
        cell[:h, :w] = image
        cell[:h, w + 2 :] = ideal
        cell[h + 1 :, :] = _GOOD if good else _BAD
        self.cells.append(cell)

    def save(self, path: Path) -> None:
        """Write the grid as a PNG (white background)."""
        from PIL import Image

        if not self.cells:
            raise ValueError("the gallery has no images")
        ch, cw, _ = self.cells[0].shape
        rows = -(-len(self.cells) // self.columns)
        grid = np.full(
            (rows * (ch + _GAP) + _GAP, self.columns * (cw + _GAP) + _GAP, 3), 255, np.uint8
        )
        for i, cell in enumerate(self.cells):
            r, c = divmod(i, self.columns)
            y, x = _GAP + r * (ch + _GAP), _GAP + c * (cw + _GAP)
            grid[y : y + ch, x : x + cw] = cell
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path, optimize=True)
