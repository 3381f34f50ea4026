"""Leakage metrics: how much of a private image a gradient-inversion reconstruction reveals.

All functions are pure and take images with values in [0, 1], shaped ``[C, H, W]`` with
``C`` = 1 (grey) or 3 (colour), as numpy arrays or torch tensors; they return numpy/python
floats.  Inputs are validated: a wrong shape, a shape mismatch, a non-finite value or a value
outside [0, 1] raises :class:`ValueError` naming the offending value.

* :func:`ssim` -- structural similarity (Wang, Bovik, Sheikh & Simoncelli, 2004, "Image
  quality assessment: from error visibility to structural similarity", IEEE TIP 13(4)),
  computed by :func:`skimage.metrics.structural_similarity` with ``data_range=1`` and its
  default 7x7 uniform window; colour images are compared per channel and averaged.
* :func:`ssim_adjusted` -- the best SSIM over global brightness/contrast adjustments of the
  reconstruction (see its docstring).  Kim & Park (2024, "Random Gradient Masking as a
  Defensive Measure to Deep Leakage in Federated Learning", arXiv:2408.08430) note that a
  reconstruction that looks obfuscated (too dark, washed out, inverted) can still reveal
  the image once its brightness is changed; this metric credits such leaks.
* :func:`ssim_many` and :func:`ssim_adjusted_many` -- the same two against a whole set of
  images in one batched computation (a reconstruction against a decoy pool, or against a
  client's private images); :func:`ssim_adjusted_to_many` -- a whole set adjusted to one
  image (a decoy pool against a private image); equal to the pairwise values.
* :func:`psnr` (peak signal-to-noise ratio, ``data_range=1``), :func:`mse`,
  :func:`label_accuracy`, and :func:`per_image` to map a metric over a batch.

SSIM is computed by one batched numpy implementation of
:func:`skimage.metrics.structural_similarity` with its defaults (a 7x7 uniform window,
sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, the mean over the windows that fit in the
image), equal to it within 1e-6 (the tests compare the two), so that a reconstruction is
scored against hundreds of images at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

__all__ = [
    "ssim",
    "ssim_adjusted",
    "ssim_many",
    "ssim_adjusted_many",
    "ssim_adjusted_to_many",
    "ImageSet",
    "adjust_brightness",
    "brightness_candidates",
    "psnr",
    "mse",
    "label_accuracy",
    "per_image",
]

_RANGE_TOL = 1e-6  # values this far outside [0, 1] (float rounding) are clipped, not rejected
_SSIM_WIN = 7      # skimage's default window; images must be at least this large
_K1, _K2 = 0.01, 0.03
_COV_NORM = _SSIM_WIN ** 2 / (_SSIM_WIN ** 2 - 1)  # sample covariances, as skimage's default
_FLAT_VAR = 1e-12  # an image whose pixel variance is below this is constant (float rounding aside)


def _to_numpy(x: object, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a numeric array: {type(x).__name__}") from exc
    return arr


def _check_image(x: object, name: str) -> np.ndarray:
    """Validate one image ``[C, H, W]`` in [0, 1]; return it as float64 numpy."""
    return _checked(x, name, 3)


def _checked(x: object, name: str, ndim: int) -> np.ndarray:
    """Validate an image (``ndim`` 3: ``[C, H, W]``) or a set of images (4: ``[N, C, H, W]``)
    in [0, 1] with C in (1, 3); return it as float64 numpy, clipped to [0, 1] (float rounding)."""
    arr = _to_numpy(x, name)
    shape = "[C, H, W]" if ndim == 3 else "[N, C, H, W]"
    if arr.ndim != ndim or arr.shape[-3] not in (1, 3):
        raise ValueError(f"{name} must have shape {shape} with C in (1, 3); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -_RANGE_TOL or hi > 1.0 + _RANGE_TOL:
            raise ValueError(f"{name} must lie in [0, 1]; got values in [{lo:.6g}, {hi:.6g}]")
    return np.clip(arr, 0.0, 1.0)


def _check_pair(truth: object, recon: object) -> tuple[np.ndarray, np.ndarray]:
    t = _check_image(truth, "truth")
    r = _check_image(recon, "recon")
    if t.shape != r.shape:
        raise ValueError(f"truth and recon shapes differ: {t.shape} vs {r.shape}")
    return t, r


def _window_means(x: np.ndarray) -> np.ndarray:
    """Means over every 7x7 window that fits in the last two axes: ``[..., H-6, W-6]``
    (:func:`scipy.ndimage.uniform_filter` cropped to the windows that lie in the image)."""
    from scipy.ndimage import uniform_filter

    pad = _SSIM_WIN // 2
    size = (1,) * (x.ndim - 2) + (_SSIM_WIN, _SSIM_WIN)
    return uniform_filter(x, size=size)[..., pad:-pad, pad:-pad]


@dataclass(frozen=True, eq=False)
class _Stats:
    """Window means and variances of a set of images ``[..., C, H, W]`` (float64)."""

    images: np.ndarray
    mean: np.ndarray
    var: np.ndarray

    @classmethod
    def of(cls, images: np.ndarray) -> "_Stats":
        mu = _window_means(images)
        return cls(images, mu, _COV_NORM * (_window_means(images * images) - mu * mu))


def _ssim_stats(a: _Stats, b: _Stats) -> np.ndarray:
    """SSIM of two broadcastable sets from their window statistics: ``[...]`` (the mean over
    channels of the per-channel mean over the windows)."""
    vxy = _COV_NORM * (_window_means(a.images * b.images) - a.mean * b.mean)
    return _ssim_parts(a.mean, a.var, b.mean, b.var, vxy)


def _ssim_batch(t: np.ndarray, r: np.ndarray) -> np.ndarray:
    """SSIM of broadcastable ``[..., C, H, W]`` float64 arrays in [0, 1]: ``[...]``."""
    if min(t.shape[-2:]) < _SSIM_WIN or min(r.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"images must be at least {_SSIM_WIN}x{_SSIM_WIN} for SSIM; got {t.shape[-2:]}")
    return _ssim_stats(_Stats.of(t), _Stats.of(r))


def _affine_fit(truths: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gain and offset ``(a_p, b_p)`` of the affine adjustment of ``r`` to every truth p
    of ``truths`` ``[P, C, H, W]`` (see :func:`brightness_candidates`)."""
    rc = r - r.mean()
    var = float((rc * rc).mean())
    a_ls = (truths * rc).mean(axis=(1, 2, 3)) / var if var > _FLAT_VAR else np.zeros(len(truths))
    a = np.where(a_ls < 0, -np.maximum(-a_ls, 1.0), np.maximum(a_ls, 1.0))
    return a, truths.mean(axis=(1, 2, 3)) - a * float(r.mean())


def _affine(truths: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``clip(a_p r + b_p, 0, 1)`` fitted to every truth p of ``truths`` ``[P, C, H, W]``:
    ``[P, C, H, W]``."""
    a, b = _affine_fit(truths, r)
    return np.clip(a[:, None, None, None] * r + b[:, None, None, None], 0.0, 1.0)


def _stretch(r: np.ndarray) -> np.ndarray:
    lo, hi = float(r.min()), float(r.max())
    return (r - lo) / (hi - lo) if hi > lo else r.copy()


def _check_set(images: object, name: str) -> np.ndarray:
    return _checked(images, name, 4)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A set of images ``[P, C, H, W]`` in [0, 1] prepared for :func:`ssim_adjusted_many`
    (validated, float64, with their window statistics), so that many reconstructions are
    scored against it without computing them again."""

    stats: _Stats
    _single: tuple | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, images: object, name: str = "truths") -> "ImageSet":
        arr = _check_set(images, name)
        if arr.size and min(arr.shape[-2:]) < _SSIM_WIN:
            raise ValueError(f"images must be at least {_SSIM_WIN}x{_SSIM_WIN} for SSIM; got {arr.shape[-2:]}")
        return cls(_Stats.of(arr))

    @property
    def images(self) -> np.ndarray:
        return self.stats.images

    def single(self) -> tuple[np.ndarray, np.ndarray]:
        """The window means and variances in single precision (computed once): the
        adjusted SSIM's per-candidate arithmetic runs in float32 (within 1e-6 of float64)."""
        if self._single is None:
            object.__setattr__(self, "_single", (self.stats.mean.astype(np.float32),
                                                 self.stats.var.astype(np.float32)))
        return self._single

    def __len__(self) -> int:
        return len(self.stats.images)


def _check_many(truths: object, recon: object) -> tuple[ImageSet, np.ndarray]:
    pool = truths if isinstance(truths, ImageSet) else ImageSet.of(truths)
    r = _check_image(recon, "recon")
    if pool.images.shape[1:] != r.shape:
        raise ValueError(f"truths and recon shapes differ: {pool.images.shape[1:]} vs {r.shape}")
    return pool, r


def ssim_many(truths: object, recon: object) -> np.ndarray:
    """:func:`ssim` of ``recon`` ``[C, H, W]`` to every image of ``truths`` ``[P, C, H, W]``
    (or an :class:`ImageSet`): ``[P]``."""
    pool, r = _check_many(truths, recon)
    return _ssim_stats(pool.stats, _Stats.of(r[None])) if len(pool) else np.zeros(0)


def ssim_adjusted_many(truths: object, recon: object) -> np.ndarray:
    """:func:`ssim_adjusted` of ``recon`` ``[C, H, W]`` to every image of ``truths``
    ``[P, C, H, W]`` (or an :class:`ImageSet`) in one batched computation: ``[P]``, with
    ``ssim_adjusted_many(T, r)[p]`` equal to ``ssim_adjusted(T[p], r)`` within 1e-6.

    The stretch and, where its clipping does not bind, the affine adjustment are affine maps
    of ``recon``, whose window statistics follow from those of ``recon`` itself; only the
    clipped affine candidates are filtered again."""
    pool, r = _check_many(truths, recon)
    if not len(pool):
        return np.zeros(0)
    t = pool.stats
    rs = _Stats.of(r[None])
    cross = _window_means(t.images * r[None])          # [P, C, h, w]: E[t r] per window
    cov_tr = _COV_NORM * (cross - t.mean * rs.mean)
    (mx, vx), cov32 = pool.single(), cov_tr.astype(np.float32)
    mr, vr = rs.mean.astype(np.float32), rs.var.astype(np.float32)

    def ssim_of_affine(gain, offset):                  # SSIM(t, gain r + offset), no clipping
        g, o = _column(gain), _column(offset)
        return _ssim_parts(mx, vx, g * mr + o, g * g * vr, g * cov32)

    one = np.ones(len(pool))
    identity = ssim_of_affine(one, 0 * one)
    lo, hi = float(r.min()), float(r.max())
    stretch = ssim_of_affine(one / (hi - lo), -lo / (hi - lo) * one) if hi > lo else identity
    gain, offset = _affine_fit(t.images, r)
    ends = np.stack([gain * lo + offset, gain * hi + offset])
    clipped = (ends.min(0) < 0.0) | (ends.max(0) > 1.0)
    affine = ssim_of_affine(gain, offset)
    if clipped.any():
        sub = t.images[clipped]
        adjusted = np.clip(gain[clipped, None, None, None] * r + offset[clipped, None, None, None], 0.0, 1.0)
        affine[clipped] = _ssim_stats(_Stats(sub, t.mean[clipped], t.var[clipped]), _Stats.of(adjusted))
    return np.maximum.reduce([identity, affine, stretch])


def ssim_adjusted_to_many(truth: object, recons: object) -> np.ndarray:
    """:func:`ssim_adjusted` of every image of ``recons`` ``[P, C, H, W]`` (or an
    :class:`ImageSet`) to the one ``truth`` ``[C, H, W]``, in one batched computation:
    ``[P]``, with ``ssim_adjusted_to_many(t, R)[p]`` equal to ``ssim_adjusted(t, R[p])`` within
    1e-6 (each image of ``recons`` adjusted to ``truth``)."""
    pool = recons if isinstance(recons, ImageSet) else ImageSet.of(recons, "recons")
    t = _check_image(truth, "truth")
    if pool.images.shape[1:] != t.shape:
        raise ValueError(f"truth and recons shapes differ: {t.shape} vs {pool.images.shape[1:]}")
    if not len(pool):
        return np.zeros(0)
    r = pool.stats
    ts = _Stats.of(t[None])
    cov_tr = _COV_NORM * (_window_means(r.images * t[None]) - ts.mean * r.mean)
    mt, vt, cov32 = ts.mean.astype(np.float32), ts.var.astype(np.float32), cov_tr.astype(np.float32)
    mr, vr = pool.single()

    def ssim_of_affine(gain, offset):                  # SSIM(t, gain r_p + offset), no clipping
        g, o = _column(gain), _column(offset)
        return _ssim_parts(mt, vt, g * mr + o, g * g * vr, g * cov32)

    one = np.ones(len(pool))
    identity = ssim_of_affine(one, 0 * one)
    lo, hi = r.images.min(axis=(1, 2, 3)), r.images.max(axis=(1, 2, 3))
    flat = hi <= lo
    span = np.where(flat, 1.0, hi - lo)
    stretch = np.where(flat, identity, ssim_of_affine(1.0 / span, -lo / span))
    rc = r.images - r.images.mean(axis=(1, 2, 3), keepdims=True)
    var = (rc * rc).mean(axis=(1, 2, 3))
    a_ls = np.where(var > _FLAT_VAR, (rc * (t - t.mean())[None]).mean(axis=(1, 2, 3))
                    / np.where(var > _FLAT_VAR, var, 1.0), 0.0)
    gain = np.where(a_ls < 0, -np.maximum(-a_ls, 1.0), np.maximum(a_ls, 1.0))
    offset = float(t.mean()) - gain * r.images.mean(axis=(1, 2, 3))
    ends = np.stack([gain * lo + offset, gain * hi + offset])
    clipped = (ends.min(0) < 0.0) | (ends.max(0) > 1.0)
    affine = ssim_of_affine(gain, offset)
    if clipped.any():
        adjusted = np.clip(gain[clipped, None, None, None] * r.images[clipped]
                           + offset[clipped, None, None, None], 0.0, 1.0)
        affine[clipped] = _ssim_stats(_Stats(np.broadcast_to(t, adjusted.shape), ts.mean, ts.var),
                                      _Stats.of(adjusted))
    return np.maximum.reduce([identity, affine, stretch])


def _column(v: np.ndarray) -> np.ndarray:
    """Per-image scalars ``[P]`` as float32 ``[P, 1, 1, 1]``."""
    return np.asarray(v, dtype=np.float32)[:, None, None, None]


def _ssim_parts(mx, vx, my, vy, vxy) -> np.ndarray:
    c1, c2 = _K1 ** 2, _K2 ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(axis=(-3, -2, -1), dtype=np.float64)


def ssim(truth: object, recon: object) -> float:
    """Structural similarity index (SSIM) of ``recon`` to ``truth``, in [-1, 1].

    SSIM(x, y) = mean over 7x7 windows of
    ``(2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))``
    with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and data range ``L = 1`` (Wang et al., 2004),
    as :func:`skimage.metrics.structural_similarity` computes it (uniform window, sample
    covariances).  For colour images (C = 3) it is the mean of the per-channel SSIMs.
    Identical images give 1.
    """
    t, r = _check_pair(truth, recon)
    return float(_ssim_batch(t, r))


def brightness_candidates(truth: object, recon: object) -> dict[str, np.ndarray]:
    """The brightness/contrast adjustments of ``recon`` that :func:`ssim_adjusted` considers.

    * ``"identity"``: ``recon`` itself;
    * ``"affine"``: ``clip(a * recon + b, 0, 1)`` with one global gain ``a`` and offset ``b``
      fitted to the truth by least squares over all pixels and channels, the gain kept at
      ``|a| >= 1``: ``a_ls = cov(recon, truth) / var(recon)``, ``a = sign(a_ls) max(|a_ls|, 1)``
      (``a = 1`` when ``recon`` is constant -- a variance below 1e-12 -- or uncorrelated), ``b = mean(truth) - a mean(recon)``
      (the best offset for that gain).  ``a`` may be negative: an inverted image leaks;
    * ``"stretch"``: the min-max stretch ``(recon - min) / (max - min)`` (the identity when
      ``recon`` is constant), what a person would do to a dark or washed-out image.

    One global ``(a, b)`` is used rather than one per channel: two numbers taken from the
    truth cannot create structure, while a per-channel fit would also borrow the colour
    balance of the truth and credit reconstructions whose colours are wrong.  The gain is
    not allowed to shrink (``|a| >= 1``): lowering the contrast reveals nothing to a viewer,
    but a least-squares gain near 0 turns a noise image into a flat image at the truth's
    mean, which SSIM scores highly against a low-contrast truth (measured: noise scored
    0.8-0.9 against a nearly uniform crop of the sky).
    """
    t, r = _check_pair(truth, recon)
    return {"identity": r, "affine": _affine(t[None], r)[0], "stretch": _stretch(r)}


def _best_adjusted(truth: object, recon: object) -> tuple[float, np.ndarray]:
    t, _ = _check_pair(truth, recon)
    candidates = list(brightness_candidates(truth, recon).values())
    values = _ssim_batch(t[None], np.stack(candidates))
    best = int(np.argmax(values))
    return float(values[best]), candidates[best]


def ssim_adjusted(truth: object, recon: object) -> float:
    """Brightness-adjusted SSIM: the best SSIM over brightness/contrast changes of ``recon``.

    ``ssim_adjusted(x, y) = max(SSIM(x, y), SSIM(x, clip(a y + b, 0, 1)), SSIM(x, stretch(y)))``
    where ``(a, b)`` is the global least-squares fit of ``y`` to ``x`` with the gain kept at
    ``|a| >= 1`` (``a`` may be negative, so an inverted reconstruction scores like its
    inverse) and ``stretch`` is the min-max stretch to [0, 1]; see
    :func:`brightness_candidates`.  It is always >= :func:`ssim` and
    reaches ~1 for a brightness-scaled, contrast-reduced or inverted copy of the truth.
    It measures leakage that a viewer could recover by adjusting brightness, the concern of
    Kim & Park (2024, arXiv:2408.08430).  :func:`adjust_brightness` returns the image that
    attains the maximum.

    Caveat (of SSIM itself): against a nearly uniform truth any flat image scores high, so
    SSIM says little about such targets.
    """
    return _best_adjusted(truth, recon)[0]


def adjust_brightness(truth: object, recon: object) -> np.ndarray:
    """The adjusted reconstruction that attains :func:`ssim_adjusted` (``[C, H, W]``, in [0, 1])."""
    return _best_adjusted(truth, recon)[1]


def psnr(truth: object, recon: object) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(1 / MSE)`` for data range 1.

    Computed by :func:`skimage.metrics.peak_signal_noise_ratio`; ``inf`` for identical images.
    """
    t, r = _check_pair(truth, recon)
    if np.array_equal(t, r):
        return float("inf")
    return float(peak_signal_noise_ratio(t, r, data_range=1.0))


def mse(truth: object, recon: object) -> float:
    """Mean squared error over all pixels and channels (:func:`skimage.metrics.mean_squared_error`)."""
    t, r = _check_pair(truth, recon)
    return float(mean_squared_error(t, r))


def label_accuracy(true: object, pred: object) -> float:
    """Fraction of positions where the predicted label equals the true label (1-D, same length)."""
    t = np.asarray(_to_numpy(true, "true"))
    p = np.asarray(_to_numpy(pred, "pred"))
    if t.ndim != 1 or p.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"true and pred must be non-empty 1-D arrays of equal length; "
                         f"got shapes {t.shape} and {p.shape}")
    return float(np.mean(t == p))


def per_image(metric: Callable[[object, object], float], truths: object, recons: object) -> np.ndarray:
    """Apply an image metric to each pair of a batch ``[N, C, H, W]``; returns ``[N]`` floats."""
    t = _to_numpy(truths, "truths")
    r = _to_numpy(recons, "recons")
    if t.ndim != 4 or t.shape != r.shape:
        raise ValueError(f"truths and recons must both have shape [N, C, H, W]; "
                         f"got {t.shape} and {r.shape}")
    return np.array([metric(a, b) for a, b in zip(t, r)], dtype=np.float64)
