"""Additive noise on the update: Gaussian (``noising:sigma``) and Laplace (``noising-laplace:b``).

``noising:sigma``
    sigma >= 0: add i.i.d. Gaussian N(0, sigma^2) noise to every update coordinate (Zhu et
    al., 2019, Sec. 5).
``noising-laplace:b``
    b >= 0: add i.i.d. Laplace(0, b) noise (density exp(-|x|/b) / 2b, std b*sqrt(2)) to
    every update coordinate.

Zero-mean noise leaves L2 matching the maximum-likelihood objective, so the aware attacker
uses ``l2`` like the naive one.

Reference: Zhu, L., Liu, Z. & Han, S. (2019). Deep Leakage from Gradients. NeurIPS.
"""

from __future__ import annotations

import numpy as np

from fl_defense.defenses.base import Defense, cast, is_update


def noising(arrays, kinds, sigma, flags, rng, *, laplace=False):
    out = []
    for a, k in zip(arrays, kinds):
        if not is_update(a, k):
            out.append(a.copy())
            continue
        noise = (rng.laplace(0.0, sigma, size=a.shape) if laplace
                 else rng.normal(0.0, sigma, size=a.shape))
        out.append(cast(a.astype(np.float64) + noise, a))
    return out


def noising_laplace(arrays, kinds, b, flags, rng):
    return noising(arrays, kinds, b, flags, rng, laplace=True)


_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)

NOISING = Defense("noising", noising, "add Gaussian N(0, sigma^2) noise to the update", "sigma",
                  example="noising:0.01", grid=_GRID, axis="log", default_experiment=True,
                  reference="Zhu, Liu & Han (2019), Sec. 5")
NOISING_LAPLACE = Defense("noising-laplace", noising_laplace, "add Laplace(0, b) noise to the update", "b",
                          example="noising-laplace:0.01", grid=_GRID, axis="log")
