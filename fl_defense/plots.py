"""Figures: reconstruction grids (truth | reconstruction | brightness-adjusted)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from fl_defense.io import save_figure


def _show(ax, img: np.ndarray) -> None:
    img = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(img.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_grid(path: str | Path, truths: np.ndarray, recons: np.ndarray, adjusted: np.ndarray,
                        captions: Sequence[str] | None = None, title: str | None = None,
                        max_rows: int = 16) -> Path:
    """A PNG with one row per target: truth | reconstruction | brightness-adjusted.

    ``captions[t]`` is written under the reconstruction (e.g. its SSIM values).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(truths), max_rows)
    fig, axes = plt.subplots(n, 3, figsize=(4.2, 1.45 * n + (0.4 if title else 0)), squeeze=False)
    for t in range(n):
        for c, (img, head) in enumerate(((truths[t], "truth"), (recons[t], "reconstruction"),
                                          (adjusted[t], "brightness-adjusted"))):
            ax = axes[t][c]
            _show(ax, img)
            if t == 0:
                ax.set_title(head, fontsize=7)
            if c == 1 and captions is not None:
                ax.set_xlabel(captions[t], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    else:
        fig.tight_layout()
    out = save_figure(fig, path, dpi=110)
    plt.close(fig)
    return out
