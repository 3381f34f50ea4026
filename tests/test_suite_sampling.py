"""The seeded sample of slow tests that a default run keeps (tests/conftest.py)."""

from conftest import slow_sample


def test_slow_sample_is_a_seeded_third_and_a_subset():
    ids = [f"tests/test_x.py::test_{i}" for i in range(17)]
    a = slow_sample(ids, 7)
    assert a == slow_sample(list(reversed(ids)), 7)  # the order of collection does not matter
    assert a <= set(ids) and len(a) == 6  # ceil(17 / 3)
    assert any(slow_sample(ids, s) != a for s in range(8, 20))  # other seeds, other samples
    covered = set().union(*(slow_sample(ids, s) for s in range(30)))
    assert covered == set(ids)  # successive seeds reach every test
    assert slow_sample([], 1) == set() and slow_sample(ids[:1], 1) == {ids[0]}
