"""Tests of fl_defense.metrics (leakage metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from fl_defense import metrics as M


def _digit_like(seed: int = 0, c: int = 1, size: int = 28) -> np.ndarray:
    """A smooth random image in [0, 1] with structure (blurred noise, stretched)."""
    rng = np.random.default_rng(seed)
    x = rng.random((c, size, size))
    k = np.ones(5) / 5
    for axis in (1, 2):
        x = np.apply_along_axis(lambda v: np.convolve(v, k, mode="same"), axis, x)
    return (x - x.min()) / (x.max() - x.min())


def test_ssim_identical_is_one_grey_and_colour():
    for c in (1, 3):
        x = _digit_like(1, c)
        assert M.ssim(x, x) == pytest.approx(1.0)


def test_ssim_decreases_with_noise():
    x = _digit_like(2)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(x.shape)
    vals = [M.ssim(x, np.clip(x + s * noise, 0, 1)) for s in (0.0, 0.05, 0.2, 0.5)]
    assert all(a > b for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] < 0.5


def test_ssim_colour_is_mean_of_channels_and_accepts_torch():
    x = _digit_like(3, 3, 32)
    y = np.clip(x + 0.1 * np.random.default_rng(1).standard_normal(x.shape), 0, 1)
    per_channel = np.mean([structural_similarity(x[i], y[i], data_range=1.0) for i in range(3)])
    assert M.ssim(x, y) == pytest.approx(per_channel, abs=1e-9)
    assert M.ssim(torch.tensor(x), torch.tensor(y)) == pytest.approx(per_channel, abs=1e-6)


@pytest.mark.parametrize("transform", [
    lambda x: 0.3 * x,               # too dark
    lambda x: 0.2 * x + 0.7,         # washed out, low contrast
    lambda x: 1.0 - x,               # inverted
    lambda x: 0.5 - 0.4 * x,         # inverted and low contrast
])
def test_adjusted_ssim_recovers_brightness_changes(transform):
    x = _digit_like(4)
    y = transform(x)
    assert M.ssim(x, y) < 0.9
    assert M.ssim_adjusted(x, y) > 0.99
    adj = M.adjust_brightness(x, y)
    assert adj.shape == x.shape and adj.min() >= 0 and adj.max() <= 1
    assert M.ssim(x, adj) == pytest.approx(M.ssim_adjusted(x, y))


def test_adjusted_ssim_does_not_create_structure_from_noise():
    x = _digit_like(5)
    noise = np.random.default_rng(5).random(x.shape)
    assert M.ssim_adjusted(x, noise) < 0.2


def test_adjustment_never_lowers_contrast():
    """A flat image at the truth's mean would score high against a low-contrast truth; the
    affine candidate keeps |gain| >= 1, so noise stays noise."""
    truth = 0.5 + 0.02 * _digit_like(6)                   # nearly uniform
    noise = np.random.default_rng(6).random(truth.shape)
    cand = M.brightness_candidates(truth, noise)
    assert cand["affine"].std() > 0.2
    assert M.ssim_adjusted(truth, noise) < 0.2
    flat = np.full_like(truth, float(truth.mean()))
    assert M.ssim(truth, flat) > 0.5                      # why: SSIM of flat vs near-flat


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), a=st.floats(-1.5, 1.5), b=st.floats(-0.5, 1.0),
       sigma=st.floats(0.0, 0.5), colour=st.booleans())
def test_adjusted_ssim_at_least_ssim(seed, a, b, sigma, colour):
    x = _digit_like(seed % 1000, 3 if colour else 1, 16)
    rng = np.random.default_rng(seed)
    y = np.clip(a * x + b + sigma * rng.standard_normal(x.shape), 0, 1)
    assert M.ssim_adjusted(x, y) >= M.ssim(x, y) - 1e-12


def test_psnr_and_mse_known_values():
    x = np.zeros((1, 8, 8))
    y = np.full((1, 8, 8), 0.1)
    assert M.mse(x, y) == pytest.approx(0.01)
    assert M.psnr(x, y) == pytest.approx(20.0)
    z = np.full((3, 8, 8), 0.5)
    assert M.mse(z, z) == 0.0
    assert M.psnr(z, z) == float("inf")


def test_label_accuracy():
    assert M.label_accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert M.label_accuracy(np.array([4]), torch.tensor([4])) == 1.0
    with pytest.raises(ValueError, match="equal length"):
        M.label_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="equal length"):
        M.label_accuracy([], [])


@pytest.mark.parametrize("bad, match", [
    (np.zeros((28, 28)), r"shape \[C, H, W\]"),
    (np.zeros((2, 28, 28)), r"shape \[C, H, W\]"),
    (np.full((1, 28, 28), 1.5), r"\[0, 1\].*1\.5"),
    (np.full((1, 28, 28), -0.1), r"\[0, 1\].*-0\.1"),
    (np.full((1, 28, 28), np.nan), "non-finite"),
])
def test_bad_images_raise(bad, match):
    good = np.zeros((1, 28, 28))
    for fn in (M.ssim, M.ssim_adjusted, M.psnr, M.mse, M.adjust_brightness):
        with pytest.raises(ValueError, match=match):
            fn(good, bad)


def test_shape_mismatch_and_too_small_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        M.ssim(np.zeros((1, 28, 28)), np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="at least 7x7"):
        M.ssim(np.zeros((1, 5, 5)), np.zeros((1, 5, 5)))


def test_per_image():
    x = np.stack([_digit_like(i) for i in range(3)])
    vals = M.per_image(M.ssim, x, x)
    assert vals.shape == (3,) and np.allclose(vals, 1.0)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        M.per_image(M.ssim, x, x[:2])
