"""``quantisation:b``: stochastic quantisation of the update to b bits per coordinate (QSGD).

b, a whole number in [2, 16]: every update array v is sent as ``||v||_2``, a sign per
coordinate and a level in ``{0, 1, ..., s}`` with ``s = 2^(b-1) - 1`` (one bit of sign and
b-1 bits of level).  Coordinate i is rounded at random to one of the two levels around
``r_i = s |v_i| / ||v||_2``: up to ``floor(r_i) + 1`` with probability ``r_i - floor(r_i)``,
else down to ``floor(r_i)``, and decoded as ``sign(v_i) ||v||_2 level_i / s``.  The decoded
update is unbiased, ``E[q(v)] = v``, with variance at most ``min(n / s^2, sqrt(n) / s)
||v||^2`` for an array of n entries (Alistarh et al., 2017, Lemma 3.1).  One norm per array
(QSGD's bucket is the array); an all-zero array stays zero.  Fewer bits protect more.

The rounding noise is zero-mean, so the aware attacker keeps L2 matching (``l2``).

Reference: Alistarh, D., Grubic, D., Li, J., Tomioka, R. & Vojnovic, M. (2017). QSGD:
Communication-Efficient SGD via Gradient Quantization and Encoding. NeurIPS.
"""

from __future__ import annotations

import numpy as np

from fl_defense.defenses.base import Defense, cast, is_update


def levels(bits: float) -> int:
    """The number of non-zero levels s of a b-bit code: ``2^(b-1) - 1``."""
    return 2 ** (int(bits) - 1) - 1


def quantisation(arrays, kinds, bits, flags, rng):
    s = levels(bits)
    out = []
    for a, k in zip(arrays, kinds):
        if not is_update(a, k):
            out.append(a.copy())
            continue
        v = a.astype(np.float64)
        norm = float(np.sqrt(np.sum(v * v)))
        u = rng.random(a.shape)  # drawn for every update coordinate, whatever the norm
        if norm == 0.0 or not np.isfinite(norm):
            if not np.isfinite(norm):
                raise ValueError("quantisation: an update array has non-finite values")
            out.append(a.copy())
            continue
        r = np.abs(v) / norm * s
        low = np.floor(r)
        level = low + (u < (r - low))
        out.append(cast(np.sign(v) * norm * level / s, a))
    return out


DEFENSE = Defense("quantisation", quantisation, "stochastic b-bit quantisation of every update array (QSGD)",
                  "b", 2.0, True, 16.0, True, example="quantisation:4", integer=True, aware_objective="l2",
                  grid=(8.0, 6.0, 5.0, 4.0, 3.0, 2.0), stronger="lower",
                  reference="Alistarh et al. (2017), QSGD")
