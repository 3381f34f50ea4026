"""Confidence bounds for leak rates: a rate carries its n and its bound.

:func:`leak_upper95` is the upper end of the two-sided 95% Clopper-Pearson ("exact")
interval of a binomial proportion, as :meth:`scipy.stats.binomtest(k, n).proportion_ci
<scipy.stats._result_classes.BinomTestResult.proportion_ci>` computes it: with 0 leaks in
n images, ``1 - 0.025 ** (1 / n)`` (5.6% for n = 64, 11% for n = 32, 21% for n = 16).  The
two-sided interval is the conservative choice: its upper end is also a one-sided 97.5%
bound.
"""

from __future__ import annotations

from scipy.stats import binomtest

__all__ = ["leak_upper95", "leak_interval95", "CONFIDENCE"]

CONFIDENCE = 0.95


def leak_upper95(k: int, n: int) -> float:
    """The upper end of the 95% Clopper-Pearson interval of ``k`` leaks in ``n`` images
    (``nan`` when ``n == 0``); ``ValueError`` unless ``0 <= k <= n``."""
    k, n = int(k), int(n)
    if n == 0:
        return float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"leaks must be in [0, n={n}], got {k}")
    return float(binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact").high)


def leak_interval95(k: int, n: int) -> tuple[float, float]:
    """The 95% Clopper-Pearson interval ``(low, high)`` of ``k`` leaks in ``n`` images."""
    k, n = int(k), int(n)
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"leaks must be in [0, n={n}], got {k}")
    ci = binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return float(ci.low), float(ci.high)
