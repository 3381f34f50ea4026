"""Random gradient masking (Kim & Park, 2024) and its BatchNorm-aware variant.

``masking:p``
    Every coordinate of every floating entry -- *including the BatchNorm running
    statistics* -- is zeroed independently with probability p, p in [0, 1) (coordinate
    zeroed iff ``u < p``, ``u`` uniform in [0, 1)); a fresh mask for every upload.  Flag
    ``rescale`` multiplies the survivors by 1/(1-p) (off by default).  This naive variant
    zeroes running statistics (values!), which breaks inference: a zeroed ``running_var``
    makes eval-mode BatchNorm divide by sqrt(eps) (a gain of ~316 at eps=1e-5).

``masking-bn:p``
    Kim & Park (2024) do not publish their treatment of BatchNorm; this is ours.

    1. Conv/linear weights and biases (``weight``): masked exactly as in ``masking:p``.
    2. BatchNorm gamma and beta (``bn_affine``): masked the same way.  Their uploads are
       deltas; their gradients (dL/dbeta_c = sum of dL/dy, dL/dgamma_c = sum of dL/dy *
       x_hat over the batch and positions of channel c) carry information about the batch,
       so exempting them would leave an unmasked channel, while a zeroed delta only keeps
       that channel's gamma/beta at its global value for one round -- harmless to inference.
    3. BatchNorm running statistics (``running_mean``, ``running_var``): never masked;
       uploaded as computed.  They are values, not gradients; zeroing them corrupts the
       aggregated model's eval-mode normalisation.  They are therefore *not* protected:
       they reveal each channel's batch mean and variance of the activations (not pixels).
    4. Integer buffers (``num_batches_tracked``): untouched.

    The random stream is consumed exactly as in ``masking:p`` (a uniform draw for every
    floating coordinate, running statistics included, the draws for running statistics
    being discarded), so ``masking:p`` and ``masking-bn:p`` with the same generator state
    zero the same update coordinates: the two variants differ only in the running
    statistics.

The aware attacker leaves the zeroed coordinates out of its matching (``l2-support``):
they arrive as exact zeros.

Reference: Kim, J. & Park, S. (2024). Random Gradient Masking as a Defensive Measure to
Deep Leakage in Federated Learning. arXiv:2408.08430.
"""

from __future__ import annotations

import numpy as np

from fl_defense.defenses.base import Defense, cast, is_float


def masking(arrays, kinds, p, flags, rng, *, bn_aware=False):
    scale = 1.0 / (1.0 - p) if "rescale" in flags else 1.0
    out = []
    for a, k in zip(arrays, kinds):
        if not is_float(a):
            out.append(a.copy())
            continue
        drop = rng.random(a.shape) < p  # drawn for bn_stat too: same stream in both variants
        if bn_aware and k == "bn_stat":
            out.append(a.copy())
            continue
        kept = a.astype(np.float64) * scale if scale != 1.0 else a
        out.append(cast(np.where(drop, 0.0, kept), a))
    return out


def masking_bn(arrays, kinds, p, flags, rng):
    return masking(arrays, kinds, p, flags, rng, bn_aware=True)


_COMMON = dict(value_name="p", low=0.0, low_inclusive=True, high=1.0, high_inclusive=False,
               flags=frozenset({"rescale"}), aware_objective="l2-support",
               grid=(0.1, 0.3, 0.5, 0.7, 0.9, 0.99), reference="Kim & Park (2024), arXiv:2408.08430")

MASKING = Defense("masking", masking, "zero every floating coordinate (running statistics included) with "
                  "probability p", example="masking:0.4", default_experiment=True,
                  batchnorm_variant="masking-bn", **_COMMON)
MASKING_BN = Defense("masking-bn", masking_bn, "zero every update coordinate (weights, BatchNorm gamma/beta) "
                     "with probability p; BatchNorm running statistics uploaded as computed",
                     example="masking-bn:0.4", **_COMMON)
