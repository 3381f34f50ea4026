"""Aggregation, validation and dropout, driven by real client updates (no Flower engine)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from clients.numpy_client import DefendedClient
from fl_defense.config import parse_run_config
from fl_defense.task import get_weights, new_model
from strategies.factory import base_strategy
from strategies.aggregation import RobustAggregation, aggregate_arrays
from strategies.dropout import DropoutStrategy
from strategies.validation import ValidatingStrategy


class Proxy:
    def __init__(self, cid):
        self.cid = str(cid)


def fit_res(arrays, cid):
    return (Proxy(cid), FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(arrays),
                               num_examples=10, metrics={"client-id": cid}))


def test_aggregate_arrays_mean_median_and_dtype():
    ups = [[np.array([1.0, 0.0], np.float32), np.array(1)],
           [np.array([2.0, 0.0], np.float32), np.array(2)],
           [np.array([9.0, 3.0], np.float32), np.array(4)]]
    mean = aggregate_arrays(ups, "mean")
    med = aggregate_arrays(ups, "median")
    np.testing.assert_allclose(mean[0], [4.0, 1.0])
    np.testing.assert_allclose(med[0], [2.0, 0.0])
    assert mean[0].dtype == np.float32 and med[1].dtype == ups[0][1].dtype
    assert int(med[1]) == 2
    with pytest.raises(ValueError, match="trimmed"):
        aggregate_arrays(ups, "trimmed")


@pytest.fixture(scope="module")
def noniid_uploads():
    """Real uploads of 5 clients on a pathological (2 classes each) split, one round."""
    cfg = parse_run_config({"num-clients": 5, "partition": "pathological:2", "local-steps": 3,
                            "batch-size": 16, "lr": 0.1})
    global_w = get_weights(new_model(cfg))
    results = []
    for cid in range(5):
        arrays, n, metrics = DefendedClient(cfg, cid).fit(global_w, {"server-round": 1})
        results.append(fit_res(arrays, cid))
    return cfg, global_w, results


def _aggregate(strategy, results):
    params, _ = strategy.aggregate_fit(1, results, [])
    return np.concatenate([a.ravel() for a in parameters_to_ndarrays(params)])


def _flat_uploads(results):
    return np.stack([np.concatenate([a.ravel() for a in parameters_to_ndarrays(r.parameters)])
                     for _, r in results]).astype(np.float64)


@pytest.mark.parametrize("name,aggregation", [("fl-defense", "median"), ("FedMedian", "mean")])
def test_median_is_a_coordinatewise_median_of_the_uploads(noniid_uploads, name, aggregation):
    """The defining property: in every coordinate at least half of the uploads lie at or
    below the aggregate and at least half at or above it (returning one client's upload, or
    the mean, fails this on non-IID updates)."""
    cfg, global_w, results = noniid_uploads
    other_cfg = parse_run_config({"num-clients": 5, "strategy": name, "aggregation": aggregation})
    got = _aggregate(base_strategy(other_cfg, global_w, None), results)
    ups = _flat_uploads(results)
    tol = 1e-6 * (1 + np.abs(ups).max())
    n = len(ups)
    assert ((ups <= got + tol).sum(0) >= n / 2).all()
    assert ((ups >= got - tol).sum(0) >= n / 2).all()
    np.testing.assert_allclose(got, np.median(ups, axis=0), rtol=1e-5, atol=1e-6)
    # and it is not the mean on these non-IID updates
    assert np.linalg.norm(got - ups.mean(0)) > 1e-3 * np.linalg.norm(ups.mean(0))


@given(data=st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=3, max_size=3),
                     min_size=1, max_size=9))
@settings(max_examples=60, deadline=None)
def test_aggregate_arrays_median_property(data):
    ups = [[np.array(row, np.float32)] for row in data]
    med = aggregate_arrays(ups, "median")[0].astype(np.float64)
    stacked = np.array(data, np.float64)
    n = len(data)
    assert ((stacked <= med + 1e-3).sum(0) >= n / 2).all() and ((stacked >= med - 1e-3).sum(0) >= n / 2).all()
    # a single upload moved arbitrarily far moves the median by no more than the spread
    far = [list(r) for r in data]
    far[0] = [1e30] * 3
    moved = aggregate_arrays([[np.array(r, np.float32)] for r in far], "median")[0].astype(np.float64)
    if n >= 3:
        assert (np.abs(moved - med) <= stacked.max(0) - stacked.min(0) + 1e-3).all()


def test_trimmed_mean_matches_scipy(noniid_uploads):
    from scipy.stats import trim_mean

    cfg, global_w, results = noniid_uploads
    tcfg = parse_run_config({"num-clients": 5, "strategy": "FedTrimmedAvg", "trim-beta": 0.2})
    got = _aggregate(base_strategy(tcfg, global_w, None), results)
    np.testing.assert_allclose(got, trim_mean(_flat_uploads(results), 0.2, axis=0), rtol=1e-5, atol=1e-6)


def test_krum_picks_the_upload_closest_to_its_neighbours(noniid_uploads):
    """Krum (Blanchard et al., 2017): the upload whose summed squared distance to its
    n - f - 2 nearest others is smallest."""
    cfg, global_w, results = noniid_uploads
    kcfg = parse_run_config({"num-clients": 5, "strategy": "Krum", "krum-malicious": 1})
    got = _aggregate(base_strategy(kcfg, global_w, None), results)
    ups = _flat_uploads(results)
    d = ((ups[:, None] - ups[None]) ** 2).sum(-1)
    k = len(ups) - 1 - 2
    scores = [np.sort(np.delete(d[i], i))[:k].sum() for i in range(len(ups))]
    np.testing.assert_allclose(got, ups[int(np.argmin(scores))], rtol=1e-6, atol=1e-7)


def test_our_mean_equals_plain_average(noniid_uploads):
    cfg, global_w, results = noniid_uploads
    ours = _aggregate(RobustAggregation(aggregation="mean"), results)
    uploads = [np.concatenate([a.ravel() for a in parameters_to_ndarrays(r.parameters)]) for _, r in results]
    np.testing.assert_allclose(ours, np.mean(uploads, axis=0), rtol=1e-6, atol=1e-7)
    # order of arrival does not change the result (reproducibility)
    again = _aggregate(RobustAggregation(aggregation="mean"), list(reversed(results)))
    np.testing.assert_array_equal(ours, again)


def test_validation_rejects_nan_and_wrong_shapes(noniid_uploads):
    cfg, global_w, results = noniid_uploads
    good = parameters_to_ndarrays(results[0][1].parameters)
    nan = [a.copy() for a in good]
    nan[0] = nan[0].astype(np.float32)
    nan[0].flat[0] = np.nan
    inf = [a.copy() for a in good]
    inf[-1] = inf[-1] + np.inf
    short = good[:-1]
    shapes = [w.shape for w in global_w]
    strategy = ValidatingStrategy(RobustAggregation(aggregation="mean"), shapes)
    bad = [fit_res(nan, 10), fit_res(inf, 11), fit_res(short, 12)]
    params, figures = strategy.aggregate_fit(1, results + bad, [])
    assert figures["clients_rejected"] == 3
    clean = _aggregate(RobustAggregation(aggregation="mean"), results)
    got = np.concatenate([a.ravel() for a in parameters_to_ndarrays(params)])
    np.testing.assert_array_equal(got, clean)
    params, figures = strategy.aggregate_fit(2, bad, [])
    assert params is None and figures["clients_rejected"] == 3


def test_dropout_wrapper_removes_dropped_answers(noniid_uploads):
    from clients.faults import client_dropped

    cfg, global_w, results = noniid_uploads
    dropped = (Proxy(99), FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(global_w),
                                 num_examples=0, metrics={"client-id": 4, "dropped": 1}))
    strategy = DropoutStrategy(RobustAggregation(aggregation="mean"))
    got = _aggregate(strategy, results[:4] + [dropped])
    assert strategy.aggregate_fit(1, results[:4] + [dropped], [])[1]["clients_dropped"] == 1
    np.testing.assert_array_equal(got, _aggregate(RobustAggregation(aggregation="mean"), results[:4]))
    assert strategy.aggregate_fit(1, [dropped], [])[0] is None
    # the client-side draw: seeded, near the rate, and different across clients and rounds
    draws = [client_dropped(0, c, r, 0.3) for c in range(20) for r in range(1, 51)]
    assert draws == [client_dropped(0, c, r, 0.3) for c in range(20) for r in range(1, 51)]
    assert abs(np.mean(draws) - 0.3) < 0.05
    assert not any(client_dropped(0, c, 1, 0.0) for c in range(20))
