"""The formal-privacy pieces without the Flower engine: config binding, the accountant
wrapper, the stack order with Flower's DP wrappers, and what SecAgg+ hands the stack."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import (DifferentialPrivacyClientSideFixedClipping,
                                  DifferentialPrivacyServerSideFixedClipping, Strategy)

from attacks.threat import attack_config
from clients.mods import update_of, when
from fl_defense.config import ConfigError, parse_run_config
from fl_defense.models import state_kinds
from fl_defense.privacy import gaussian_epsilon, gaussian_epsilon_rdp
from fl_defense.task import (client_indices, defended_payload, get_weights, load_data, new_model,
                             payload_to_weights, select_device)
from strategies.accounting import PrivacyAccountingStrategy, accounted_mechanism
from strategies.central_dp import sampled_clients
from strategies.factory import build_strategy
from strategies.secagg import SecAggDecoder, add_update, clipping_range, max_weight, secagg_workflow


class Proxy:
    def __init__(self, cid):
        self.cid = str(cid)


def fit_res(arrays, cid, *, dropped=False, parameters=None, num_examples=10):
    metrics = {"client-id": cid, **({"dropped": 1} if dropped else {})}
    return (Proxy(cid), FitRes(status=Status(Code.OK, ""),
                               parameters=parameters or ndarrays_to_parameters(arrays),
                               num_examples=num_examples, metrics=metrics))


class Inner(Strategy):
    """Records what it is asked to aggregate; returns the first upload."""

    def __init__(self):
        self.seen = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return []

    def aggregate_fit(self, server_round, results, failures):
        self.seen.append(results)
        return results[0][1].parameters, {"inner": 1}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


# ------------------------------------------------------------------------------- config


def test_dp_clip_is_bound_into_the_defense_spec_and_round_trips():
    cfg = parse_run_config({"defense": "dp-gaussian:2", "dp-clip": 0.3})
    assert cfg.defense.name == "dp-gaussian" and cfg.defense.value == 2.0 and cfg.defense.clip == 0.3
    again = parse_run_config(cfg.to_run_config())
    assert again == cfg and again.to_run_config()["defense"] == "dp-gaussian:2.0"
    # other defenses carry no C, whatever dp-clip says
    assert parse_run_config({"defense": "clipping:0.5", "dp-clip": 3.0}).defense.clip is None
    with pytest.raises(ConfigError, match="dp-clip must be > 0"):
        parse_run_config({"defense": "dp-gaussian:1", "dp-clip": -1.0})


def test_secagg_conflicts_are_refused_with_the_reason():
    for overrides, fragment in [({"aggregation": "median"}, "median would silently become the mean"),
                                ({"strategy": "Krum"}, "Krum scores each upload"),
                                ({"strategy": "FedTrimmedAvg"}, "trims"),
                                ({"dp-strategy": "server-side-fixed-clipping"}, "clips each upload")]:
        with pytest.raises(ConfigError, match=fragment):
            parse_run_config({"secure-aggregation": True, **overrides})
        parse_run_config(overrides)  # fine without SecAgg+
    parse_run_config({"secure-aggregation": True, "strategy": "FedAvg",
                      "dp-strategy": "client-side-fixed-clipping", "defense": "dp-gaussian:1"})


# ------------------------------------------------------------------------- accounting


def test_accountant_counts_each_clients_releases_and_reports_the_worst():
    inner = Inner()
    acc = PrivacyAccountingStrategy(inner, 1.5, 1e-5, "add-or-remove-one", "local")
    w = [np.zeros(3, np.float32)]
    rounds = [[fit_res(w, 0), fit_res(w, 1)],
              [fit_res(w, 0), fit_res(w, 1, dropped=True)],   # a dropped client released nothing
              [fit_res(w, 0)]]
    for r, results in enumerate(rounds, start=1):
        _, metrics = acc.aggregate_fit(r, results, [])
        assert metrics["inner"] == 1  # the inner strategy's metrics pass through
    assert acc.releases == {0: 3, 1: 1}
    assert metrics["dp_releases"] == 3 and metrics["epsilon_scope"] == "local" and metrics["dp_delta"] == 1e-5
    assert metrics["epsilon"] == pytest.approx(gaussian_epsilon(1.5, 3, 1e-5))
    assert metrics["epsilon_rdp"] == pytest.approx(gaussian_epsilon_rdp(1.5, 3, 1e-5))
    # no noise: no finite epsilon, written as null
    _, metrics = PrivacyAccountingStrategy(Inner(), 0.0, 1e-5, "replace-one", "central").aggregate_fit(
        1, [fit_res(w, 0)], [])
    assert metrics["epsilon"] is None and metrics["epsilon_rdp"] is None


def test_accounted_mechanism():
    assert accounted_mechanism(parse_run_config({})) is None
    assert accounted_mechanism(parse_run_config({"defense": "dp-gaussian:0.8"})) == (0.8, "local")
    assert accounted_mechanism(parse_run_config({"dp-strategy": "client-side-fixed-clipping",
                                                 "dp-noise-multiplier": 2.0})) == (2.0, "central")


# ------------------------------------------------------------ the stack and DP wrappers


def _chain(strategy):
    names = []
    while strategy is not None:
        names.append(type(strategy).__name__)
        strategy = getattr(strategy, "inner", None) or getattr(strategy, "strategy", None)
    return names


@pytest.mark.parametrize("wrapper, flower_class", [
    ("client-side-fixed-clipping", DifferentialPrivacyClientSideFixedClipping),
    ("server-side-fixed-clipping", DifferentialPrivacyServerSideFixedClipping)])
def test_the_hook_sits_outside_flowers_dp_wrapper(tmp_path, wrapper, flower_class):
    cfg = parse_run_config({"dp-strategy": wrapper, "dp-clip": 0.2, "dp-noise-multiplier": 0.5,
                            "attack-every": 1, "num-clients": 4, "fraction-fit": 0.5})
    chain = _chain(build_strategy(cfg, tmp_path))
    assert chain == ["ResumableStrategy", "RecordingStrategy", "PrivacyAccountingStrategy", "SeededSampling",
                     "DropoutStrategy", "AttackHook", flower_class.__name__, "ValidatingStrategy",
                     "RobustAggregation"]
    dp = build_strategy(cfg, tmp_path)
    while not isinstance(dp, flower_class):
        dp = dp.inner
    assert dp.clipping_norm == 0.2 and dp.noise_multiplier == 0.5 and dp.num_sampled_clients == 2
    assert sampled_clients(cfg) == 2


def test_secagg_stack_decodes_outermost(tmp_path):
    cfg = parse_run_config({"secure-aggregation": True, "defense": "dp-gaussian:1"})
    # the resume wrapper only keeps state; the decoder is the first to touch what arrives
    assert _chain(build_strategy(cfg, tmp_path)) == [
        "ResumableStrategy", "SecAggDecoder", "RecordingStrategy", "PrivacyAccountingStrategy", "SeededSampling",
        "DropoutStrategy", "AttackHook", "ValidatingStrategy", "RobustAggregation"]


def test_server_side_wrapper_clips_what_the_inner_strategy_gets_not_what_arrives():
    """What the hook (outside) sees is the raw upload; the inner strategy gets it clipped."""
    inner = Inner()
    dp = DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=0.0, clipping_norm=1.0,
                                                    num_sampled_clients=1)
    global_w = [np.zeros(4, np.float32)]
    dp.configure_fit(1, ndarrays_to_parameters(global_w), None)
    raw = [np.full(4, 3.0, np.float32)]  # norm 6
    results = [fit_res(raw, 0)]
    dp.aggregate_fit(1, results, [])
    clipped = parameters_to_ndarrays(inner.seen[0][0][1].parameters)[0]
    assert np.linalg.norm(clipped) == pytest.approx(1.0)


def test_aware_attacker_matches_direction_under_client_side_clipping():
    assert attack_config(parse_run_config({"attacker": "aware", "dp-strategy": "client-side-fixed-clipping"}),
                         "cpu").objective == "cosine"
    assert attack_config(parse_run_config({"attacker": "aware", "dp-strategy": "server-side-fixed-clipping"}),
                         "cpu").objective == "l2"
    assert attack_config(parse_run_config({"attacker": "aware", "defense": "dp-gaussian:1"}),
                         "cpu").objective == "cosine"
    assert attack_config(parse_run_config({"attacker": "naive", "defense": "dp-gaussian:1"}),
                         "cpu").objective == "l2"


def test_the_attack_budget_comes_from_the_config():
    acfg = attack_config(parse_run_config({"attack-max-iter": 77, "attack-restarts": 3, "attack-patience": 11}), "cpu")
    assert (acfg.max_iter, acfg.restarts, acfg.patience) == (77, 3, 11)


# ------------------------------------------------------------------------------ SecAgg+


def test_decoder_adds_the_global_back_in_its_dtypes():
    inner = SecAggDecoder(Inner())
    global_w = [np.array([1.0, 2.0], np.float32), np.array(7, np.int64)]
    inner.configure_fit(3, ndarrays_to_parameters(global_w), None)
    aggregate = ndarrays_to_parameters([np.array([0.5, -0.25]), np.array(2.0)])  # float64, as dequantised
    results = [fit_res(None, c, parameters=aggregate, num_examples=n) for c, n in [(0, 4), (1, 6)]]
    inner.aggregate_fit(3, results, [])
    seen = inner.inner.seen[0]
    assert [r.num_examples for _, r in seen] == [4, 6] and [r.metrics["client-id"] for _, r in seen] == [0, 1]
    for _, res in seen:
        w = parameters_to_ndarrays(res.parameters)
        np.testing.assert_array_equal(w[0], np.array([1.5, 1.75], np.float32))
        assert w[0].dtype == np.float32 and w[1].dtype == np.int64 and int(w[1]) == 9
    assert add_update(global_w, update_of(add_update(global_w, [np.ones(2), np.array(1)]), global_w))[1] == 8


def test_decoder_counts_each_failed_client_once():
    class Sampler(Inner):
        def configure_fit(self, server_round, parameters, client_manager):
            return [("proxy", None)] * 4

    decoder = SecAggDecoder(Sampler())
    decoder.configure_fit(1, ndarrays_to_parameters([np.zeros(2, np.float32)]), None)
    aggregate = ndarrays_to_parameters([np.ones(2)])
    results = [fit_res(None, c, parameters=aggregate) for c in range(3)]
    errors = [Exception("client 3 failed"), Exception("client 3 failed")]  # as SecAggPlusWorkflow reports it
    seen = []
    decoder.inner.aggregate_fit = lambda r, res, fail: (seen.append(fail), (None, {}))[1]
    decoder.aggregate_fit(1, results, errors)
    assert len(seen[0]) == 1


def test_update_mod_switch_passes_through_when_off():
    calls = []

    def mod(msg, ctxt, call_next):
        calls.append("mod")
        return call_next(msg, ctxt)

    class Ctxt:
        run_config = {"secure-aggregation": False}

    switched = when(lambda cfg: cfg.secure_aggregation, mod)
    assert switched("msg", Ctxt(), lambda m, c: "reply") == "reply" and calls == []
    Ctxt.run_config = {"secure-aggregation": True}
    assert switched("msg", Ctxt(), lambda m, c: "reply") == "reply" and calls == ["mod"]


def test_quantisation_range_and_max_weight():
    assert clipping_range(parse_run_config({})) == pytest.approx(10 * 0.3)  # 10 lr
    assert clipping_range(parse_run_config({"lr": 0.1})) == pytest.approx(10 * 0.1)
    assert clipping_range(parse_run_config({"model": "bncnn", "lr": 0.05, "local-steps": 20})) == pytest.approx(20.0)  # the counter
    assert clipping_range(parse_run_config({"defense": "clipping:0.3"})) == 0.3
    assert clipping_range(parse_run_config({"defense": "clipping:0.3", "model": "bncnn", "local-steps": 20})) == pytest.approx(20.0)
    assert clipping_range(parse_run_config({"dp-strategy": "client-side-fixed-clipping", "dp-clip": 0.2})) == 0.2
    assert clipping_range(parse_run_config({"defense": "dp-gaussian:0.5", "dp-clip": 0.2})) == pytest.approx(0.8)
    assert clipping_range(parse_run_config({"secagg-clipping-range": 0.05})) == 0.05
    assert max_weight(parse_run_config({})) == 4  # one step of 4 images
    assert max_weight(parse_run_config({"local-steps": 20, "batch-size": 32, "images-per-client": 0})) == 640
    assert max_weight(parse_run_config({"local-steps": 20, "batch-size": 32, "images-per-client": 16})) == 16
    wf = secagg_workflow(parse_run_config({"local-steps": 1, "batch-size": 1, "secagg-num-shares": 5,
                                           "secagg-reconstruction-threshold": 3}))
    assert (wf.max_weight, wf.num_shares, wf.reconstruction_threshold) == (1.0, 5, 3)
    assert wf.clipping_range == pytest.approx(3.0)  # 10 lr at the default lr 0.3
    assert secagg_workflow(parse_run_config({"model": "bncnn", "lr": 0.05, "local-steps": 1})).clipping_range == 1.0


@pytest.mark.parametrize("overrides", [
    pytest.param({}, marks=pytest.mark.slow), {"local-steps": 1, "batch-size": 1},
    pytest.param({"model": "bncnn", "lr": 0.05}, marks=pytest.mark.slow),
    {"model": "bncnn", "lr": 0.05, "local-steps": 1, "batch-size": 1}])
def test_quantisation_range_covers_real_updates(overrides):
    """B covers every coordinate of the real round-1 updates (what SecAgg+ would clip)."""
    cfg = parse_run_config({"num-clients": 10, **overrides})
    train, _ = load_data(cfg)
    model = new_model(cfg, train)
    kinds, global_w = state_kinds(model), get_weights(model)
    bound = clipping_range(cfg)
    for cid in (0, 7):
        idx = client_indices(cfg, cid)
        payload, _, _ = defended_payload(cfg, model, kinds, global_w, train.images[idx], train.labels[idx],
                                         cid, 1, select_device())
        update = update_of(payload_to_weights(global_w, payload, kinds), global_w)
        assert max(float(np.abs(u).max()) for u in update) <= bound
