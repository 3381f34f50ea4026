"""Figures: reconstruction grids (truth | reconstruction | brightness-adjusted)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fl_defense.io import save_figure

_GAP = 0.12  # white space between tiles, as a fraction of a tile's side
_CAPTION = 0.32  # space under each row for its caption, likewise


def _rgb(img: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` (C = 1 or 3) as an RGB array ``[H, W, 3]`` in [0, 1]."""
    img = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    return np.repeat(img, 3, axis=0).transpose(1, 2, 0) if img.shape[0] == 1 else img.transpose(1, 2, 0)


def mosaic(rows: Sequence[Sequence[np.ndarray]], gap: int, caption: int) -> np.ndarray:
    """The tiles ``rows[r][c]`` (``[C, H, W]``, all one size) on a white canvas, ``gap``
    pixels apart and ``caption`` pixels of space under each row: ``[rows*(H+gap+caption),
    cols*(W+gap), 3]``."""
    h, w = rows[0][0].shape[-2:]
    step_y, step_x = h + gap + caption, w + gap
    canvas = np.ones((len(rows) * step_y, len(rows[0]) * step_x, 3), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = r * step_y + gap // 2, c * step_x + gap // 2
            canvas[y:y + h, x:x + w] = _rgb(img)
    return canvas


def reconstruction_grid(path: str | Path, truths: np.ndarray, recons: np.ndarray, adjusted: np.ndarray,
                        captions: Sequence[str] | None = None, title: str | None = None,
                        max_rows: int = 16) -> Path:
    """A PNG with one row per target: truth | reconstruction | brightness-adjusted.

    ``captions[t]`` is written under the reconstruction (e.g. its SSIM values).  The tiles
    are drawn as one image (nearest-neighbour, greyscale for one channel).
    """
    from matplotlib.figure import Figure

    n = min(len(truths), max_rows)
    side = truths.shape[-1]
    gap, cap = max(1, round(_GAP * side)), round(_CAPTION * side)
    canvas = mosaic([(truths[t], recons[t], adjusted[t]) for t in range(n)], gap, cap)
    head = 0.3 + (0.25 if title else 0)  # inches above the tiles for the column heads and the title
    width = 4.2
    height = width * canvas.shape[0] / canvas.shape[1] + head
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1 - head / height))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    step_x, step_y = side + gap, side + gap + cap
    for c, name in enumerate(("truth", "reconstruction", "brightness-adjusted")):
        fig.text((c + 0.5) / 3, 1 - (head - 0.08) / height, name, ha="center", va="bottom", fontsize=7)
    if captions is not None:
        for t in range(n):
            ax.text(1.5 * step_x, t * step_y + gap // 2 + side + cap / 2, captions[t], ha="center",
                    va="center", fontsize=6)
    if title:
        fig.text(0.5, 1 - 0.06 / height, title, ha="center", va="top", fontsize=8)
    return save_figure(fig, path, dpi=110)
