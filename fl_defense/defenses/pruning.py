"""``pruning:p``: zero the smallest-magnitude entries of the update.

p in [0, 1): in every update array of n entries, the k = floor(p*n) entries of smallest
magnitude are zeroed (Zhu et al., 2019, Sec. 5).  p is read as its shortest decimal
representation, so 0.29 * 100 gives k = 29 exactly.  Ties in magnitude: the entry with the
lower flat (C-order) index is pruned first.  Flag ``global``: one ranking over all update
entries concatenated in payload order, n their total count.

The aware attacker leaves the pruned coordinates out (``l2-support``): they arrive as exact
zeros.

Reference: Zhu, L., Liu, Z. & Han, S. (2019). Deep Leakage from Gradients. NeurIPS.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

import numpy as np

from fl_defense.defenses.base import Defense, update_indices


def prune_count(p: float, n: int) -> int:
    """floor(p * n), p read as its shortest decimal representation (exact arithmetic)."""
    return int((Decimal(repr(float(p))) * n).to_integral_value(rounding=ROUND_FLOOR))


def smallest(magnitudes: np.ndarray, p: float) -> np.ndarray:
    """Boolean mask of the floor(p*n) smallest entries; ties: lower index first."""
    k = prune_count(p, magnitudes.size)
    mask = np.zeros(magnitudes.size, dtype=bool)
    mask[np.argsort(magnitudes, kind="stable")[:k]] = True
    return mask


def pruning(arrays, kinds, p, flags, rng):
    out = [a.copy() for a in arrays]
    idx = update_indices(arrays, kinds)
    if not idx:
        return out
    if "global" in flags:
        mags = np.concatenate([np.abs(arrays[i].astype(np.float64)).ravel() for i in idx])
        masks = np.split(smallest(mags, p), np.cumsum([arrays[i].size for i in idx])[:-1])
    else:
        masks = [smallest(np.abs(arrays[i]).ravel(), p) for i in idx]
    for i, mask in zip(idx, masks):
        flat = out[i].reshape(-1)
        flat[mask] = 0
        out[i] = flat.reshape(arrays[i].shape)
    return out


DEFENSE = Defense("pruning", pruning, "zero the floor(p*n) smallest-magnitude update entries", "p", 0.0, True,
                  1.0, False, frozenset({"global"}), "pruning:0.9", aware_objective="l2-support",
                  grid=(0.1, 0.3, 0.5, 0.7, 0.9, 0.99), default_experiment=True,
                  reference="Zhu, Liu & Han (2019), Sec. 5")
