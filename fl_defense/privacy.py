"""Privacy accounting of the Gaussian mechanism: (epsilon, delta) after k releases.

Definitions
-----------
A client's release in one round is ``u~ = clip_C(u) + N(0, (Z C)^2 I)``: its update ``u``
(all update entries together) scaled to L2 norm at most ``C`` and Gaussian noise of
standard deviation ``sigma = Z C`` added to every coordinate (``Z`` is the *noise
multiplier*).  A mechanism M is (epsilon, delta)-differentially private under a
neighbouring relation ~ when, for all neighbouring inputs D ~ D' and all events S,
``P[M(D) in S] <= e^epsilon P[M(D') in S] + delta`` (Dwork & Roth, 2014, Def. 2.4).

Neighbouring relations (client level; the input is one client's whole local data set):

* ``add-or-remove-one`` -- D' is D, or the empty data set in its place, whose update is
  0 (the client's contribution present or absent).  Two clipped updates then differ by
  at most the *sensitivity* ``Delta = C`` in L2.  This is the user-level relation of
  McMahan et al. (2018) and Flower's ``NeighboringRelation.ADD_OR_REMOVE_ONE``.
* ``replace-one`` -- D' is any other data set (the client's data replaced), so the two
  clipped updates differ by at most ``Delta = 2 C``.

Either way the round's mechanism is the Gaussian mechanism with ratio
``Delta / sigma = s / Z`` (s = 1 or 2), and the privacy of a Gaussian mechanism depends
on nothing but that ratio.

Composition: k releases (adaptively chosen: each round's update depends on the global
model, itself a function of earlier releases) of Gaussian mechanisms of ratio
``mu_1 = s / Z`` are *exactly* as private as one Gaussian mechanism of ratio
``mu = sqrt(k) s / Z`` (the Gaussian mechanism is mu-GDP and mu-GDP composes to
sqrt(k) mu-GDP with equality of the trade-off functions; Dong, Roth & Su, 2022,
Cor. 3.3 and Thm. 2.7).  :func:`gaussian_epsilon` uses that identity, then the exact
privacy profile of one Gaussian mechanism (Balle & Wang, 2018, Thm. 8),

    delta(epsilon) = Phi(mu/2 - epsilon/mu) - e^epsilon Phi(-mu/2 - epsilon/mu),

as implemented by Google's dp-accounting (``GaussianPrivacyLoss.get_delta_for_epsilon``),
and returns the smallest epsilon with ``delta(epsilon) <= delta`` (root found with
:func:`scipy.optimize.brentq` to a relative tolerance of 1e-10).  No amplification by
sampling is claimed: the server sees which clients uploaded.

:func:`gaussian_epsilon_rdp` gives the same releases through Flower's RDP accountant
(``flwr.supercore.privacy_accounting.rdp_accountant.RdpAccountant``, no amplification,
add-or-remove relation with the noise multiplier ``Z / s``); RDP's conversion to
(epsilon, delta) is an upper bound, looser than the exact profile.

References
----------
* Balle, B. & Wang, Y.-X. (2018). Improving the Gaussian Mechanism for Differential
  Privacy: Analytical Calibration and Optimal Denoising. ICML.
* Dong, J., Roth, A. & Su, W. J. (2022). Gaussian Differential Privacy. JRSS B 84(1).
* Dwork, C. & Roth, A. (2014). The Algorithmic Foundations of Differential Privacy.
* McMahan, H. B., Ramage, D., Talwar, K. & Zhang, L. (2018). Learning Differentially
  Private Recurrent Language Models. ICLR.
* Mironov, I. (2017). Renyi Differential Privacy. IEEE CSF.
"""

from __future__ import annotations

import math
from functools import lru_cache

NEIGHBOURING = ("add-or-remove-one", "replace-one")
"""The neighbouring relations :func:`sensitivity` knows (see the module docstring)."""


def sensitivity(neighbouring: str) -> float:
    """The L2 sensitivity of the clipped update, in units of the clipping bound C."""
    if neighbouring == "add-or-remove-one":
        return 1.0
    if neighbouring == "replace-one":
        return 2.0
    raise ValueError(f"unknown neighbouring relation {neighbouring!r}; choose {' or '.join(NEIGHBOURING)}")


def _check(noise_multiplier: float, releases: int, delta: float) -> None:
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)) \
            or not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if isinstance(releases, bool) or not isinstance(releases, int) or releases < 0:
        raise ValueError(f"releases must be an integer >= 0, got {releases!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")


def gaussian_mu(noise_multiplier: float, releases: int, neighbouring: str = "add-or-remove-one") -> float:
    """``mu = sqrt(k) Delta / sigma = sqrt(k) s / Z``: the one Gaussian mechanism that the
    k releases compose to exactly (``inf`` when Z = 0)."""
    s = sensitivity(neighbouring)
    if noise_multiplier == 0:
        return math.inf
    return math.sqrt(releases) * s / noise_multiplier


@lru_cache(maxsize=4096)
def _epsilon_of_mu(mu: float, delta: float) -> float:
    from dp_accounting.pld.privacy_loss_mechanism import GaussianPrivacyLoss
    from scipy.optimize import brentq

    # ratio mu: noise of standard deviation 1/mu against a sensitivity of 1
    loss = GaussianPrivacyLoss(standard_deviation=1.0 / mu, sensitivity=1.0)

    def excess(eps: float) -> float:
        return loss.get_delta_for_epsilon(eps) - delta

    if excess(0.0) <= 0:
        return 0.0
    hi = max(1.0, mu * mu)
    while excess(hi) > 0:
        hi *= 2.0
    return float(brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-10, maxiter=500))


def gaussian_epsilon(noise_multiplier: float, releases: int, delta: float,
                     neighbouring: str = "add-or-remove-one") -> float:
    """Epsilon at ``delta`` of ``releases`` Gaussian releases with noise multiplier
    ``noise_multiplier`` (Z = sigma / C) under ``neighbouring``; exact (module docstring).

    0 for no release, ``inf`` for Z = 0 (no noise: no finite epsilon).
    """
    _check(noise_multiplier, releases, delta)
    if releases == 0:
        return 0.0
    mu = gaussian_mu(noise_multiplier, releases, neighbouring)
    if math.isinf(mu):
        return math.inf
    return _epsilon_of_mu(float(mu), float(delta))


def gaussian_epsilon_rdp(noise_multiplier: float, releases: int, delta: float,
                         neighbouring: str = "add-or-remove-one") -> float:
    """The same releases through Flower's RDP accountant (an upper bound on
    :func:`gaussian_epsilon`)."""
    _check(noise_multiplier, releases, delta)
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                   SamplingMethod)
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    config = PrivacyConfig(target_delta=delta, population_size=1,
                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                           sampling_method=SamplingMethod.NO_AMPLIFICATION)
    accountant = RdpAccountant(config)
    event = GaussianPrivacyEvent(noise_multiplier=noise_multiplier / sensitivity(neighbouring),
                                 sample_size=1, population_size=1)
    accountant.compose(event, releases)
    return accountant.get_epsilon(delta)
