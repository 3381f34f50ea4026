"""``clipping:C``: scale the update to an L2 norm of at most C.

C > 0: the update entries are scaled together by ``min(1, C / ||u||_2)``, ``||u||_2`` the
L2 norm of all update entries concatenated (Abadi et al., 2016; McMahan et al., 2018).
Flag ``per-layer``: the same, per array.  A non-finite update is refused (``ValueError``
naming the entry).  C is absolute: it is in the units of the updates the federation
trains with, so a threshold holds for one setting (:mod:`experiments.setting`).

The aware attacker matches the direction of the update (``cosine``), which clipping keeps.

References: Abadi, M. et al. (2016). Deep Learning with Differential Privacy. ACM CCS.
McMahan, H. B. et al. (2018). Learning Differentially Private Recurrent Language Models.
ICLR.
"""

from __future__ import annotations

import numpy as np

from fl_defense.defenses.base import Defense, cast, l2, update_indices


def clipping(arrays, kinds, c, flags, rng):
    out = [a.copy() for a in arrays]
    idx = update_indices(arrays, kinds)
    for i in idx:
        if not np.all(np.isfinite(arrays[i])):
            raise ValueError(f"clipping: payload entry {i} has non-finite values")
    groups = [[i] for i in idx] if "per-layer" in flags else [idx]
    for group in groups:
        norm = l2([arrays[i] for i in group])
        if norm > c:
            for i in group:
                out[i] = cast(arrays[i].astype(np.float64) * (c / norm), arrays[i])
    return out


DEFENSE = Defense("clipping", clipping, "scale the update by min(1, C / ||u||_2)", "C", 0.0, False,
                  flags=frozenset({"per-layer"}), example="clipping:1.0", aware_objective="cosine",
                  grid=(1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5), axis="log", stronger="lower",
                  default_experiment=True, reference="Abadi et al. (2016); McMahan et al. (2018)")
