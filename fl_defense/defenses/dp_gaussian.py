"""``dp-gaussian:Z``: the Gaussian mechanism on the client's update.

Z > 0, with the clipping bound C > 0 (config key ``dp-clip``, bound into the spec): the
update entries are first scaled together by ``min(1, C/||u||_2)`` (``||u||_2`` over all
update entries concatenated, as in ``clipping:C``), then i.i.d. N(0, (Z C)^2) noise is
added to every update coordinate (Abadi et al., 2016; McMahan et al., 2018).  Its privacy
is accounted in :mod:`fl_defense.privacy`.

BatchNorm running statistics
----------------------------
``running_mean`` / ``running_var`` are values computed from the client's private batches
(the per-channel mean and variance of its activations); uploaded as they are, they are a
release that no clipping bounds, so no (epsilon, delta) would cover the upload.  Clipping
and noising them as if they were updates would need the global statistics (the defense
sees only the payload) and would corrupt eval-mode normalisation.  ``dp-gaussian``
therefore refuses a payload holding floating ``bn_stat`` entries (``ValueError`` naming
the entry), and the configuration refuses ``dp-gaussian`` with a BatchNorm model before a
run starts, as Opacus refuses BatchNorm.

The aware attacker matches the direction (``cosine``): the scale is unknown after clipping
and the noise is isotropic.
"""

from __future__ import annotations

from fl_defense.defenses.base import Defense, is_float
from fl_defense.defenses.clipping import clipping
from fl_defense.defenses.noising import noising


def dp_gaussian(arrays, kinds, z, flags, rng, *, clip):
    for i, (a, k) in enumerate(zip(arrays, kinds)):
        if k == "bn_stat" and is_float(a):
            raise ValueError(f"dp-gaussian: payload entry {i} is a BatchNorm running statistic, a value "
                             "computed from the private batches that no clipping bounds; the Gaussian "
                             "mechanism cannot cover it (use a model without BatchNorm)")
    clipped = clipping(arrays, kinds, clip, frozenset(), rng)
    return noising(clipped, kinds, z * clip, frozenset(), rng)


DEFENSE = Defense("dp-gaussian", dp_gaussian,
                  "the Gaussian mechanism: clip the update to L2 norm C (dp-clip), add N(0, (Z C)^2)",
                  "Z", 0.0, False, example="dp-gaussian:1.0", needs_clip=True, aware_objective="cosine",
                  grid=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0), axis="log",
                  reference="Abadi et al. (2016); McMahan et al. (2018)")
