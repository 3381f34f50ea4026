"""The maths of the client-side defenses: pure functions over payload arrays.

Each function takes ``(arrays, kinds, value, flags, rng)`` -- validated by
:func:`fl_defense.defenses.apply_defense` -- and returns new arrays of the same shapes and
dtypes; it never modifies its input.  The registry, the ``NAME[:VALUE[,FLAG]]`` grammar
and the randomness live in :mod:`fl_defense.defenses`.

Definitions
-----------
==========================  ============================================================
``none``                    identity.
``masking:p``               random gradient masking (Kim & Park, 2024): every coordinate
                            of every floating entry -- *including the BatchNorm running
                            statistics* -- is zeroed independently with probability p,
                            p in [0, 1) (coordinate zeroed iff ``u < p``, ``u`` uniform
                            in [0, 1)); a fresh mask for every upload.  Flag ``rescale``
                            multiplies the survivors by 1/(1-p) (off by default).  This
                            naive variant zeroes running statistics (values!), which
                            breaks inference: a zeroed ``running_var`` makes eval-mode
                            BatchNorm divide by sqrt(eps) (a gain of ~316 at eps=1e-5).
``masking-bn:p``            BatchNorm-aware random gradient masking (see below).
``clipping:C``              C > 0: the update entries are scaled together by
                            ``min(1, C / ||u||_2)``, ``||u||_2`` the L2 norm of all
                            update entries concatenated (Abadi et al., 2016; McMahan et
                            al., 2018).  Flag ``per-layer``: the same, per array.
``pruning:p``               p in [0, 1): in every update array of n entries, the
                            k = floor(p*n) entries of smallest magnitude are zeroed (Zhu
                            et al., 2019, Sec. 5).  p is read as its shortest decimal
                            representation, so 0.29 * 100 gives k = 29 exactly.  Ties in
                            magnitude: the entry with the lower flat (C-order) index is
                            pruned first.  Flag ``global``: one ranking over all update
                            entries concatenated in payload order, n their total count.
``noising:sigma``           sigma >= 0: add i.i.d. Gaussian N(0, sigma^2) noise to every
                            update coordinate (Zhu et al., 2019, Sec. 5).
``noising-laplace:b``       b >= 0: add i.i.d. Laplace(0, b) noise (density
                            exp(-|x|/b) / 2b, std b*sqrt(2)) to every update coordinate.
``dp-gaussian:Z``           Z > 0, with the clipping bound C > 0 (config key ``dp-clip``,
                            bound into the spec): the Gaussian mechanism.  The update
                            entries are first scaled together by ``min(1, C/||u||_2)``
                            (``||u||_2`` over all update entries concatenated, as in
                            ``clipping:C``), then i.i.d. N(0, (Z C)^2) noise is added to
                            every update coordinate (Abadi et al., 2016; McMahan et al.,
                            2018).  Its privacy is accounted in :mod:`fl_defense.privacy`.
                            A payload with floating BatchNorm running statistics is
                            refused (below).
==========================  ============================================================

The Gaussian mechanism and BatchNorm running statistics
-------------------------------------------------------
``running_mean`` / ``running_var`` are values computed from the client's private batches
(the per-channel mean and variance of its activations); uploaded as they are, they are a
release that no clipping bounds, so no (epsilon, delta) would cover the upload.  Clipping
and noising them as if they were updates would need the global statistics (the defense
sees only the payload) and would corrupt eval-mode normalisation.  ``dp-gaussian``
therefore refuses a payload holding floating ``bn_stat`` entries (``ValueError`` naming
the entry), and the configuration refuses ``dp-gaussian`` with a BatchNorm model before a
run starts, as Opacus refuses BatchNorm (use ``lenet``, or a model without BatchNorm).

Only plain ``masking`` touches ``bn_stat`` entries; every other defense returns them equal
to the input.  Noise, masks and scale factors are computed in float64 and the result is
cast back to each array's dtype.

BatchNorm-aware masking (``masking-bn:p``)
------------------------------------------
Kim & Park (2024) do not publish their treatment of BatchNorm; this is ours.

1. Conv/linear weights and biases (``weight``): masked exactly as in ``masking:p``.
2. BatchNorm gamma and beta (``bn_affine``): masked the same way.  Their uploads are
   deltas; their gradients (dL/dbeta_c = sum of dL/dy, dL/dgamma_c = sum of dL/dy * x_hat
   over the batch and positions of channel c) carry information about the batch, so
   exempting them would leave an unmasked channel, while a zeroed delta only keeps that
   channel's gamma/beta at its global value for one round -- harmless to inference.
3. BatchNorm running statistics (``running_mean``, ``running_var``): never masked;
   uploaded as computed.  They are values, not gradients; zeroing them corrupts the
   aggregated model's eval-mode normalisation.  They are therefore *not* protected: they
   reveal each channel's batch mean and variance of the activations (not pixels).
4. Integer buffers (``num_batches_tracked``): untouched.

The random stream is consumed exactly as in ``masking:p`` (a uniform draw for every
floating coordinate, running statistics included, the draws for running statistics being
discarded), so ``masking:p`` and ``masking-bn:p`` with the same generator state zero the
same update coordinates: the two variants differ only in the running statistics.

References
----------
* Kim, J. & Park, S. (2024). Random Gradient Masking as a Defensive Measure to Deep
  Leakage in Federated Learning. arXiv:2408.08430.
* Zhu, L., Liu, Z. & Han, S. (2019). Deep Leakage from Gradients. NeurIPS.
* Abadi, M. et al. (2016). Deep Learning with Differential Privacy. ACM CCS.
* McMahan, H. B., Ramage, D., Talwar, K. & Zhang, L. (2018). Learning Differentially
  Private Recurrent Language Models. ICLR.
* Ioffe, S. & Szegedy, C. (2015). Batch Normalization. ICML.
"""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Decimal
from typing import Sequence

import numpy as np

from fl_defense.models import UPDATE_KINDS

# ----------------------------------------------------------------------------- helpers


def _is_float(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def _is_update(a: np.ndarray, kind: str) -> bool:
    return kind in UPDATE_KINDS and _is_float(a)


def _cast(x: object, like: np.ndarray) -> np.ndarray:
    """A new array of ``like``'s dtype and shape holding ``x``."""
    return np.array(x, dtype=like.dtype).reshape(like.shape)


# ---------------------------------------------------------------------------- defenses


def identity(arrays, kinds, value, flags, rng):
    return [a.copy() for a in arrays]


def masking(arrays, kinds, p, flags, rng, *, bn_aware=False):
    scale = 1.0 / (1.0 - p) if "rescale" in flags else 1.0
    out = []
    for a, k in zip(arrays, kinds):
        if not _is_float(a):
            out.append(a.copy())
            continue
        drop = rng.random(a.shape) < p  # drawn for bn_stat too: same stream in both variants
        if bn_aware and k == "bn_stat":
            out.append(a.copy())
            continue
        kept = a.astype(np.float64) * scale if scale != 1.0 else a
        out.append(_cast(np.where(drop, 0.0, kept), a))
    return out


def masking_bn(arrays, kinds, p, flags, rng):
    return masking(arrays, kinds, p, flags, rng, bn_aware=True)


def _l2(arrays: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def clipping(arrays, kinds, c, flags, rng):
    out = [a.copy() for a in arrays]
    idx = [i for i, (a, k) in enumerate(zip(arrays, kinds)) if _is_update(a, k)]
    for i in idx:
        if not np.all(np.isfinite(arrays[i])):
            raise ValueError(f"clipping: payload entry {i} has non-finite values")
    groups = [[i] for i in idx] if "per-layer" in flags else [idx]
    for group in groups:
        norm = _l2([arrays[i] for i in group])
        if norm > c:
            for i in group:
                out[i] = _cast(arrays[i].astype(np.float64) * (c / norm), arrays[i])
    return out


def _prune_count(p: float, n: int) -> int:
    """floor(p * n), p read as its shortest decimal representation (exact arithmetic)."""
    return int((Decimal(repr(float(p))) * n).to_integral_value(rounding=ROUND_FLOOR))


def _smallest(magnitudes: np.ndarray, p: float) -> np.ndarray:
    """Boolean mask of the floor(p*n) smallest entries; ties: lower index first."""
    k = _prune_count(p, magnitudes.size)
    mask = np.zeros(magnitudes.size, dtype=bool)
    mask[np.argsort(magnitudes, kind="stable")[:k]] = True
    return mask


def pruning(arrays, kinds, p, flags, rng):
    out = [a.copy() for a in arrays]
    idx = [i for i, (a, k) in enumerate(zip(arrays, kinds)) if _is_update(a, k)]
    if not idx:
        return out
    if "global" in flags:
        mags = np.concatenate([np.abs(arrays[i].astype(np.float64)).ravel() for i in idx])
        masks = np.split(_smallest(mags, p), np.cumsum([arrays[i].size for i in idx])[:-1])
    else:
        masks = [_smallest(np.abs(arrays[i]).ravel(), p) for i in idx]
    for i, mask in zip(idx, masks):
        flat = out[i].reshape(-1)
        flat[mask] = 0
        out[i] = flat.reshape(arrays[i].shape)
    return out


def noising(arrays, kinds, sigma, flags, rng, *, laplace=False):
    out = []
    for a, k in zip(arrays, kinds):
        if not _is_update(a, k):
            out.append(a.copy())
            continue
        noise = (rng.laplace(0.0, sigma, size=a.shape) if laplace
                 else rng.normal(0.0, sigma, size=a.shape))
        out.append(_cast(a.astype(np.float64) + noise, a))
    return out


def noising_laplace(arrays, kinds, b, flags, rng):
    return noising(arrays, kinds, b, flags, rng, laplace=True)


def dp_gaussian(arrays, kinds, z, flags, rng, *, clip):
    for i, (a, k) in enumerate(zip(arrays, kinds)):
        if k == "bn_stat" and _is_float(a):
            raise ValueError(f"dp-gaussian: payload entry {i} is a BatchNorm running statistic, a value "
                             "computed from the private batches that no clipping bounds; the Gaussian "
                             "mechanism cannot cover it (use a model without BatchNorm)")
    clipped = clipping(arrays, kinds, clip, frozenset(), rng)
    return noising(clipped, kinds, z * clip, frozenset(), rng)
