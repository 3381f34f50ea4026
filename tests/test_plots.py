"""Reconstruction grids: the tiles land where the layout says, grey and colour."""

import numpy as np
import pytest

from fl_defense.plots import mosaic, reconstruction_grid


def test_mosaic_places_every_tile_on_a_white_canvas():
    rng = np.random.default_rng(0)
    tiles = [[rng.random((1, 8, 8)) for _ in range(3)] for _ in range(2)]
    canvas = mosaic(tiles, gap=2, caption=3)
    assert canvas.shape == (2 * (8 + 2 + 3), 3 * (8 + 2), 3)
    for r in range(2):
        for c in range(3):
            y, x = r * 13 + 1, c * 10 + 1
            np.testing.assert_allclose(canvas[y:y + 8, x:x + 8, 0], tiles[r][c][0], atol=1e-6)
            np.testing.assert_allclose(canvas[y:y + 8, x:x + 8, 2], tiles[r][c][0], atol=1e-6)
    assert canvas[0, 0].tolist() == [1.0, 1.0, 1.0]  # the gaps are white


@pytest.mark.parametrize("channels", [1, 3])
def test_reconstruction_grid_writes_a_png(tmp_path, channels):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(1)
    x = rng.random((5, channels, 16, 16))
    path = reconstruction_grid(tmp_path / "g.png", x, x[::-1], x, [f"c{i}" for i in range(5)], title="t", max_rows=4)
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > img.shape[1] > 100  # four rows of three tiles: taller than wide
    assert not list(tmp_path.glob("*.tmp*"))
