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
* :func:`psnr` (peak signal-to-noise ratio, ``data_range=1``), :func:`mse`,
  :func:`label_accuracy`, and :func:`per_image` to map a metric over a batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

__all__ = [
    "ssim",
    "ssim_adjusted",
    "adjust_brightness",
    "brightness_candidates",
    "psnr",
    "mse",
    "label_accuracy",
    "per_image",
]

_RANGE_TOL = 1e-6  # values this far outside [0, 1] (float rounding) are clipped, not rejected
_SSIM_WIN = 7      # skimage's default window; images must be at least this large


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
    arr = _to_numpy(x, name)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"{name} must have shape [C, H, W] with C in (1, 3); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
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


def _ssim_np(t: np.ndarray, r: np.ndarray) -> float:
    if min(t.shape[1:]) < _SSIM_WIN:
        raise ValueError(f"images must be at least {_SSIM_WIN}x{_SSIM_WIN} for SSIM; got {t.shape[1:]}")
    if t.shape[0] == 1:
        return float(structural_similarity(t[0], r[0], data_range=1.0))
    return float(structural_similarity(t, r, data_range=1.0, channel_axis=0))


def ssim(truth: object, recon: object) -> float:
    """Structural similarity index (SSIM) of ``recon`` to ``truth``, in [-1, 1].

    SSIM(x, y) = mean over 7x7 windows of
    ``(2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))``
    with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and data range ``L = 1`` (Wang et al., 2004),
    as computed by :func:`skimage.metrics.structural_similarity` (uniform window, sample
    covariances).  For colour images (C = 3) it is the mean of the per-channel SSIMs.
    Identical images give 1.
    """
    t, r = _check_pair(truth, recon)
    return _ssim_np(t, r)


def brightness_candidates(truth: object, recon: object) -> dict[str, np.ndarray]:
    """The brightness/contrast adjustments of ``recon`` that :func:`ssim_adjusted` considers.

    * ``"identity"``: ``recon`` itself;
    * ``"affine"``: ``clip(a * recon + b, 0, 1)`` with one global gain ``a`` and offset ``b``
      fitted to the truth by least squares over all pixels and channels, the gain kept at
      ``|a| >= 1``: ``a_ls = cov(recon, truth) / var(recon)``, ``a = sign(a_ls) max(|a_ls|, 1)``
      (``a = 1`` when ``recon`` is constant or uncorrelated), ``b = mean(truth) - a mean(recon)``
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
    rc = r - r.mean()
    var = float((rc * rc).mean())
    a_ls = float((rc * (t - t.mean())).mean()) / var if var > 0.0 else 0.0
    a = -max(-a_ls, 1.0) if a_ls < 0 else max(a_ls, 1.0)
    b = float(t.mean()) - a * float(r.mean())
    lo, hi = float(r.min()), float(r.max())
    stretch = (r - lo) / (hi - lo) if hi > lo else r.copy()
    return {"identity": r, "affine": np.clip(a * r + b, 0.0, 1.0), "stretch": stretch}


def _best_adjusted(truth: object, recon: object) -> tuple[float, np.ndarray]:
    t, _ = _check_pair(truth, recon)
    best_val, best_img = -np.inf, None
    for img in brightness_candidates(truth, recon).values():
        val = _ssim_np(t, img)
        if val > best_val:
            best_val, best_img = val, img
    return float(best_val), best_img


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
