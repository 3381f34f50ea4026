"""The seeded sample of slow tests that a default run keeps (tests/conftest.py)."""

from types import SimpleNamespace

import pytest
from conftest import SLOW_BUDGET, slow_cost, slow_sample


def test_slow_sample_fits_the_budget_is_seeded_and_covers_every_test_over_days():
    costs = {f"tests/test_x.py::test_{i}": float(c) for i, c in enumerate([120, 65, 60, 50, 40, 40, 30, 30, 25,
                                                                           20, 90, 70, 45, 35, 80, 15, 10])}
    a = slow_sample(costs, 7, budget=200)
    assert a == slow_sample(dict(reversed(list(costs.items()))), 7, budget=200)  # collection order does not matter
    assert a <= set(costs) and sum(costs[k] for k in a) <= 200
    # greedy in the seeded order: no test left out would still have fitted
    spare = 200 - sum(costs[k] for k in a)
    assert all(costs[k] > spare for k in set(costs) - a)
    assert any(slow_sample(costs, s, budget=200) != a for s in range(8, 20))  # other seeds, other samples
    covered = set().union(*(slow_sample(costs, s, budget=200) for s in range(60)))
    assert covered == set(costs)  # successive seeds reach every test
    assert slow_sample({}, 1) == set()
    # a test dearer than the budget still runs, alone, on the days it comes first
    dear = {"a": 500.0, "b": 10.0}
    samples = [slow_sample(dear, s, budget=100) for s in range(20)]
    assert {"a"} in samples and {"b"} in samples and all(s in ({"a"}, {"b"}) for s in samples)
    assert slow_sample(costs, 3) == slow_sample(costs, 3, budget=SLOW_BUDGET)


def test_a_slow_test_without_a_declared_cost_is_a_usage_error_naming_it():
    def item(mark):
        return SimpleNamespace(nodeid="tests/test_x.py::test_y", get_closest_marker=lambda name: mark)

    assert slow_cost(item(pytest.mark.slow(seconds=42).mark)) == 42.0
    for bad in (pytest.mark.slow.mark, pytest.mark.slow(seconds=0).mark, pytest.mark.slow(seconds="9").mark):
        with pytest.raises(pytest.UsageError, match=r"tests/test_x.py::test_y.*seconds=S"):
            slow_cost(item(bad))
