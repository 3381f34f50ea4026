"""Aggregation, validation and dropout, driven by real client updates (no Flower engine)."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from clients.numpy_client import DefendedClient
from fl_defense.config import parse_run_config
from fl_defense.task import get_weights, new_model
from strategies.factory import base_strategy
from strategies.robust import DropoutStrategy, RobustAggregation, ValidatingStrategy, aggregate_arrays


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


@pytest.mark.parametrize("name,aggregation", [("fl-defense", "median"), ("FedMedian", "mean"),
                                              ("FedTrimmedAvg", "mean"), ("Krum", "mean")])
def test_robust_aggregates_differ_from_mean_on_noniid(noniid_uploads, name, aggregation):
    cfg, global_w, results = noniid_uploads
    mean_cfg = parse_run_config({"num-clients": 5, "aggregation": "mean"})
    mean = _aggregate(base_strategy(mean_cfg, global_w, None), results)
    other_cfg = parse_run_config({"num-clients": 5, "strategy": name, "aggregation": aggregation,
                                  "krum-malicious": 1})
    other = _aggregate(base_strategy(other_cfg, global_w, None), results)
    assert mean.shape == other.shape
    # The aggregates differ materially, not by float noise.
    assert np.linalg.norm(mean - other) > 1e-3 * np.linalg.norm(mean)


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
    params, _ = strategy.aggregate_fit(1, results + bad, [])
    assert strategy.last_rejected == 3
    clean = _aggregate(RobustAggregation(aggregation="mean"), results)
    got = np.concatenate([a.ravel() for a in parameters_to_ndarrays(params)])
    np.testing.assert_array_equal(got, clean)
    params, _ = strategy.aggregate_fit(2, bad, [])
    assert params is None and strategy.last_rejected == 3


def test_dropout_wrapper_removes_dropped_answers(noniid_uploads):
    from clients.numpy_client import client_dropped

    cfg, global_w, results = noniid_uploads
    dropped = (Proxy(99), FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(global_w),
                                 num_examples=0, metrics={"client-id": 4, "dropped": 1}))
    strategy = DropoutStrategy(RobustAggregation(aggregation="mean"))
    got = _aggregate(strategy, results[:4] + [dropped])
    assert strategy.last_dropped == 1
    np.testing.assert_array_equal(got, _aggregate(RobustAggregation(aggregation="mean"), results[:4]))
    assert strategy.aggregate_fit(1, [dropped], [])[0] is None
    # the client-side draw: seeded, near the rate, and different across clients and rounds
    draws = [client_dropped(0, c, r, 0.3) for c in range(20) for r in range(1, 51)]
    assert draws == [client_dropped(0, c, r, 0.3) for c in range(20) for r in range(1, 51)]
    assert abs(np.mean(draws) - 0.3) < 0.05
    assert not any(client_dropped(0, c, 1, 0.0) for c in range(20))
