"""Privacy accounting (fl_defense.privacy) against the analytic Gaussian mechanism, and the
``dp-gaussian`` defense's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import norm

from fl_defense.defenses import apply_defense, defense_rng, parse_defense
from fl_defense.privacy import gaussian_epsilon, gaussian_epsilon_rdp, gaussian_mu, sensitivity

FAST = settings(max_examples=30, deadline=None)


def analytic_epsilon(sens: float, sigma: float, delta: float) -> float:
    """Reference, from the definition (Balle & Wang 2018, Thm. 8): the smallest eps with
    Phi(D/(2s) - eps s/D) - e^eps Phi(-D/(2s) - eps s/D) <= delta, D the sensitivity and s
    the noise's standard deviation."""
    def excess(eps):
        return (norm.cdf(sens / (2 * sigma) - eps * sigma / sens)
                - math.exp(eps) * norm.cdf(-sens / (2 * sigma) - eps * sigma / sens) - delta)

    if excess(0.0) <= 0:
        return 0.0
    hi = 1.0
    while excess(hi) > 0:
        hi *= 2
    return brentq(excess, 0.0, hi, xtol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("neighbouring", ["add-or-remove-one", "replace-one"])
@pytest.mark.parametrize("z", [0.5, 0.8, 1.0, 2.0, 5.0, 20.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_one_round_matches_the_analytic_gaussian_mechanism(z, delta, neighbouring):
    clip = 0.7  # epsilon depends on C only through sensitivity / sigma = s C / (Z C)
    ref = analytic_epsilon(sensitivity(neighbouring) * clip, z * clip, delta)
    assert gaussian_epsilon(z, 1, delta, neighbouring) == pytest.approx(ref, rel=0.01)


@FAST
@given(z=st.floats(0.3, 30.0), delta=st.floats(1e-9, 1e-2))
def test_one_round_analytic_property(z, delta):
    ref = analytic_epsilon(1.0, z, delta)
    assert gaussian_epsilon(z, 1, delta) == pytest.approx(ref, rel=0.01, abs=1e-9)


@pytest.mark.parametrize("z, rounds", [(1.0, 3), (2.0, 10)])
def test_composition_matches_dp_accountings_pld(z, rounds):
    """k rounds against dp-accounting's PLD accountant composing k Gaussian events
    numerically (an independent composition method)."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_event.GaussianDpEvent(z), rounds)
    assert gaussian_epsilon(z, rounds, 1e-5) == pytest.approx(pld.get_epsilon(1e-5), rel=0.01)


@FAST
@given(z=st.floats(0.3, 20.0), rounds=st.integers(1, 200), delta=st.floats(1e-9, 1e-2))
def test_epsilon_grows_with_rounds_and_shrinks_with_noise(z, rounds, delta):
    eps = gaussian_epsilon(z, rounds, delta)
    assert eps > 0
    assert gaussian_epsilon(z, rounds + 1, delta) > eps
    assert gaussian_epsilon(z * 1.5, rounds, delta) < eps
    assert gaussian_epsilon(z, rounds, delta, "replace-one") > eps     # sensitivity 2C
    assert gaussian_epsilon(z, rounds, delta * 0.1) > eps              # smaller delta, larger epsilon
    assert gaussian_epsilon_rdp(z, rounds, delta) >= eps * (1 - 1e-6)  # RDP's conversion is an upper bound


def test_rdp_is_flowers_accountant_and_looser():
    eps, rdp = gaussian_epsilon(1.0, 20, 1e-5), gaussian_epsilon_rdp(1.0, 20, 1e-5)
    assert rdp > eps * 1.02  # measurably looser
    # replace-one is add-or-remove with half the noise multiplier
    assert gaussian_epsilon_rdp(2.0, 5, 1e-5, "replace-one") == pytest.approx(gaussian_epsilon_rdp(1.0, 5, 1e-5))


def test_edges_and_validation():
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    assert gaussian_epsilon(0.0, 3, 1e-5) == math.inf and gaussian_mu(0.0, 3) == math.inf
    assert gaussian_mu(2.0, 9, "replace-one") == pytest.approx(3.0)
    for args, fragment in [((-1.0, 1, 1e-5), "noise_multiplier"), ((1.0, -1, 1e-5), "releases"),
                           ((1.0, 1.5, 1e-5), "releases"), ((1.0, 1, 0.0), "delta"), ((1.0, 1, 1.0), "delta"),
                           ((float("nan"), 1, 1e-5), "noise_multiplier")]:
        with pytest.raises(ValueError, match=fragment):
            gaussian_epsilon(*args)
    with pytest.raises(ValueError, match="neighbouring"):
        gaussian_epsilon(1.0, 1, 1e-5, "swap")


# ------------------------------------------------------------------ the dp-gaussian defense


def lenet_like_payload(seed=0):
    g = np.random.default_rng(seed)
    return ([g.normal(size=(12, 1, 5, 5)).astype(np.float32), g.normal(size=12).astype(np.float32),
             g.normal(size=(10, 300)).astype(np.float32), g.normal(size=10).astype(np.float64)],
            ["weight"] * 4)


def _flat(arrays):
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])


def test_dp_gaussian_clips_the_whole_update_then_adds_noise_of_std_z_c():
    payload, kinds = lenet_like_payload()
    before = [a.copy() for a in payload]
    clip, z = 0.5, 2.0
    spec = parse_defense("dp-gaussian:2.0", clip=clip)
    out = apply_defense(spec, payload, kinds, defense_rng(3, 1, 2))
    for a, a0, b in zip(payload, before, out):
        np.testing.assert_array_equal(a, a0)
        assert b.dtype == a.dtype and b.shape == a.shape
    u = _flat(payload)
    clipped = u * min(1.0, clip / np.linalg.norm(u))
    noise = _flat(out) - clipped
    # float32 casts aside, the noise is N(0, (Z C)^2) per coordinate: mean 0, std Z C
    assert noise.std() == pytest.approx(z * clip, rel=0.05)
    assert abs(noise.mean()) < 4 * z * clip / math.sqrt(noise.size)
    # the same stream gives the same release; another round another one
    again = apply_defense(spec, payload, kinds, defense_rng(3, 1, 2))
    other = apply_defense(spec, payload, kinds, defense_rng(3, 1, 3))
    assert all(np.array_equal(a, b) for a, b in zip(out, again))
    assert not all(np.array_equal(a, b) for a, b in zip(out, other))


@FAST
@given(scale=st.floats(1e-3, 1e3), clip=st.floats(1e-3, 10.0), seed=st.integers(0, 2**16))
def test_dp_gaussian_release_lies_in_the_clip_ball_plus_noise(scale, clip, seed):
    payload, kinds = lenet_like_payload(seed)
    payload = [a * np.asarray(scale, a.dtype) for a in payload]
    z = 1e-6  # noise negligible: what is left is the clipped update
    out = apply_defense(parse_defense(f"dp-gaussian:{z}", clip=clip), payload, kinds, defense_rng(0, 0, 0))
    u, v = _flat(payload), _flat(out)
    expected = u * min(1.0, clip / np.linalg.norm(u))
    np.testing.assert_allclose(v, expected, rtol=1e-4, atol=20 * z * clip + 1e-6 * np.abs(expected).max())


def test_dp_gaussian_refuses_batchnorm_statistics_and_keeps_integers():
    spec = parse_defense("dp-gaussian:1.0", clip=1.0)
    payload = [np.ones(4, np.float32), np.ones(3, np.float32), np.array(5, np.int64)]
    with pytest.raises(ValueError, match="entry 1 is a BatchNorm running statistic"):
        apply_defense(spec, payload, ["weight", "bn_stat", "bn_stat"], defense_rng(0, 0, 0))
    out = apply_defense(spec, [payload[0], payload[2]], ["weight", "bn_stat"], defense_rng(0, 0, 0))
    assert out[1] == 5 and out[1].dtype == np.int64
    with pytest.raises(ValueError, match="non-finite"):
        apply_defense(spec, [np.array([np.nan, 1.0])], ["weight"], defense_rng(0, 0, 0))
