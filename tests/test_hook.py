"""The honest-but-curious hook, driven by real client uploads (no Flower engine)."""

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from strategies.hook import AttackHook, TrainingImageOracle
from attacks.threat import objective_for, observed_gradient, threat_model
from clients.numpy_client import DefendedClient
from fl_defense.config import parse_run_config
from fl_defense.task import get_weights, new_model
from strategies.factory import base_strategy


class Proxy:
    def __init__(self, cid):
        self.cid = str(cid)


class Spy:
    """An inner strategy that records what it was given."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = None

    def configure_fit(self, server_round, parameters, client_manager):
        return []

    def aggregate_fit(self, server_round, results, failures):
        self.seen = results
        return self.inner.aggregate_fit(server_round, results, failures)


def uploads(cfg, server_round=1):
    global_w = get_weights(new_model(cfg))
    results = []
    for cid in range(cfg.num_clients):
        arrays, n, metrics = DefendedClient(cfg, cid).fit(global_w, {"server-round": server_round})
        results.append((Proxy(cid), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)))
    return global_w, results


def test_aware_objectives_and_threat_model():
    assert objective_for("naive", "masking") == "l2"
    assert objective_for("aware", "masking") == "l2-support"
    assert objective_for("aware", "pruning") == "l2-support"
    assert objective_for("aware", "clipping") == "cosine"
    assert objective_for("aware", "noising") == "l2"
    with pytest.raises(ValueError, match="smart"):
        objective_for("smart", "none")
    assert threat_model(1, 1) == "exact" and threat_model(1, 4) == "simulated"
    assert threat_model(1, 4, num_examples=1) == "exact" and threat_model(2, 1) == "simulated"


def test_observed_gradient_is_exact_for_one_step(tmp_path):
    import torch

    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 1, "lr": 0.1})
    model = new_model(cfg)
    global_w, results = uploads(cfg)
    oracle = TrainingImageOracle(cfg)
    images, labels = oracle.images(0, 1)
    assert images.shape == (1, 1, 28, 28)
    loss = torch.nn.functional.cross_entropy(model(torch.as_tensor(images)), torch.as_tensor(labels))
    true = torch.autograd.grad(loss, list(model.parameters()))
    from flwr.common import parameters_to_ndarrays

    got = observed_gradient(model, global_w, parameters_to_ndarrays(results[0][1].parameters), cfg.lr)
    for a, b in zip(got, true):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("base", ["fl-defense", "FedMedian"])
def test_hook_attacks_scores_and_passes_uploads_unchanged(tmp_path, base):
    cfg = parse_run_config({"num-clients": 3, "local-steps": 1, "batch-size": 1, "attack-every": 1,
                            "attack-clients": 2, "attack-max-iter": 150, "strategy": base,
                            "out-dir": str(tmp_path)})
    global_w, results = uploads(cfg)
    spy = Spy(base_strategy(cfg, global_w, None))
    hook = AttackHook(spy, cfg, tmp_path)
    hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
    params, m = hook.aggregate_fit(1, results, [])
    assert spy.seen is results  # the very same uploads, untouched
    for key in ("attack_ssim_mean", "attack_ssim_max", "attack_ssim_adjusted_mean", "attack_label_acc",
                "attack_leaked", "attack_seconds"):
        assert key in m, m
    assert m["attack_targets"] == 2 and m["attack_threat_model"] == "exact" and m["attack_images"] == 2
    # no defense, one image per client: the attack recovers the digits
    assert m["attack_ssim_mean"] > 0.8 and m["attack_label_acc"] == 1.0 and m["attack_leaked"] == 2
    assert (tmp_path / "attack" / "round-001.png").stat().st_size > 1000


def test_hook_is_idle_between_attack_rounds_and_survives_errors(tmp_path):
    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 1, "attack-every": 2,
                            "out-dir": str(tmp_path)})
    global_w, results = uploads(cfg)
    from strategies.validation import ValidatingStrategy

    spy = Spy(ValidatingStrategy(base_strategy(cfg, global_w, None), [w.shape for w in global_w]))
    hook = AttackHook(spy, cfg, tmp_path)
    hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
    _, figures = hook.aggregate_fit(1, results, [])
    assert not any(k.startswith("attack") for k in figures) and figures["clients_rejected"] == 0
    # a malformed upload makes the attack fail; the round still aggregates
    bad = [(Proxy(0), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(global_w[:-1]), 1, {"client-id": 0}))]
    hook.configure_fit(2, ndarrays_to_parameters(global_w), None)
    params, figures = hook.aggregate_fit(2, bad + results[1:], [])
    assert "attack_error" in figures
    assert params is not None and figures["clients_rejected"] == 1


@pytest.mark.slow
def test_hook_inverts_batches_and_counts_the_leak_per_image(tmp_path):
    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 2, "images-per-client": 2,
                            "attack-every": 1, "attack-clients": 2, "attack-max-iter": 400,
                            "attack-restarts": 0, "out-dir": str(tmp_path)})
    global_w, results = uploads(cfg)
    assert all(r.num_examples == 2 for _, r in results)  # what the server reads as N
    hook = AttackHook(Spy(base_strategy(cfg, global_w, None)), cfg, tmp_path)
    hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
    _, m = hook.aggregate_fit(1, results, [])
    assert m["attack_targets"] == 2 and m["attack_images"] == 4 and m["attack_skipped"] == 0
    assert m["attack_threat_model"] == "simulated" and m["attack_label_source"] == "infer"
    assert 0 <= m["attack_leaked"] <= 4 and m["attack_label_acc"] >= 0.75
    assert m["attack_leaked"] >= 2, m


def test_hook_skips_uploads_too_large_to_simulate(tmp_path, monkeypatch):
    import strategies.hook as hook_mod

    monkeypatch.setattr(hook_mod, "MAX_IMAGE_STEPS", 1)
    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 2, "images-per-client": 2,
                            "attack-every": 1, "attack-clients": 2, "out-dir": str(tmp_path)})
    global_w, results = uploads(cfg)
    hook = AttackHook(Spy(base_strategy(cfg, global_w, None)), cfg, tmp_path)
    hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
    _, m = hook.aggregate_fit(1, results, [])
    assert m["attack_skipped"] == 2 and m["attack_targets"] == 0 and "attack_ssim_mean" not in m


@pytest.mark.slow
def test_hook_attacks_the_secagg_aggregate_once_as_one_batch(tmp_path):
    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 2, "images-per-client": 2,
                            "attack-every": 1, "attack-max-iter": 400, "attack-restarts": 0,
                            "secure-aggregation": True, "out-dir": str(tmp_path)})
    global_w, results = uploads(cfg)
    # what SecAgg+ hands every FitRes (after SecAggDecoder): global + the num_examples-weighted mean update
    n = np.array([r.num_examples for _, r in results], dtype=np.float64)
    ups = [parameters_to_ndarrays(r.parameters) for _, r in results]
    agg = [g + sum(w * (u[i] - g) for w, u in zip(n, ups)) / n.sum() for i, g in enumerate(global_w)]
    same = ndarrays_to_parameters([a.astype(g.dtype) for a, g in zip(agg, global_w)])
    results = [(p, FitRes(r.status, same, r.num_examples, r.metrics)) for p, r in results]
    hook = AttackHook(Spy(base_strategy(cfg, global_w, None)), cfg, tmp_path)
    hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
    _, m = hook.aggregate_fit(1, results, [])
    assert m["attack_threat_model"] == "secagg-aggregate" and m["attack_targets"] == 1
    assert m["attack_images"] == 4  # the two clients' images, scored one-to-one
    assert m["attack_label_acc"] >= 0.75 and m["attack_leaked"] >= 2, m


def test_the_oracle_feeds_nothing_back_to_the_attack(tmp_path, monkeypatch):
    """The hook's scoring oracle replaced by garbage: the reconstructions it saves are the
    same to the bit, and only the scores move."""
    from fl_defense.scoring import load_record

    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 2, "images-per-client": 2,
                            "attack-every": 1, "attack-clients": 2, "attack-max-iter": 60, "attack-restarts": 0})
    global_w, results = uploads(cfg)
    runs = {}
    for name in ("true", "garbage"):
        out = tmp_path / name
        hook = AttackHook(Spy(base_strategy(cfg, global_w, None)), cfg, out)
        if name == "garbage":
            rng = np.random.default_rng(0)
            real = hook.oracle.images
            monkeypatch.setattr(hook.oracle, "images", lambda c, r: (rng.random(real(c, r)[0].shape).astype(np.float32),
                                                                     (real(c, r)[1] + 1) % 10))
        hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
        _, m = hook.aggregate_fit(1, results, [])
        runs[name] = (load_record(out / "attack" / "round-001.npz"), m)
    (a, ma), (b, mb) = runs["true"], runs["garbage"]
    np.testing.assert_array_equal(a["reconstructions"], b["reconstructions"])
    np.testing.assert_array_equal(a["reconstruction_label"], b["reconstruction_label"])
    assert not np.array_equal(a["truths"], b["truths"]) and mb["attack_leaked"] == 0 < ma["attack_leaked_paper"]


def test_attack_clients_oracle_feeds_nothing_back(tmp_path):
    """The experiments' entry point: a garbage oracle changes the scores, never the attack."""
    from experiments.client_attack import attack_clients
    from fl_defense.datasets import load_dataset

    cfg = parse_run_config({"attack-max-iter": 40, "attack-restarts": 0, "images-per-client": 2, "batch-size": 2})
    train, _ = load_dataset("mnist-embedded")
    images, labels = train.images[:4], train.labels[:4]
    rng = np.random.default_rng(1)

    def garbage(i):
        return rng.random((2, 1, 28, 28)).astype(np.float32), np.array([0, 1])

    _, _, real = attack_clients(cfg, images, labels, 10)
    scores, _, fake = attack_clients(cfg, images, labels, 10, oracle=garbage)
    for x, y in zip(real.images, fake.images):
        np.testing.assert_array_equal(x, y)
    assert scores.ssim_adjusted.max() < 0.5


@pytest.mark.slow
def test_attacks_in_worker_processes_give_the_serial_figures_in_order_and_stop_their_workers(tmp_path):
    import os

    cfg0 = parse_run_config({"num-clients": 2, "batch-size": 2, "images-per-client": 2, "attack-every": 1,
                             "attack-clients": 2, "attack-max-iter": 30, "attack-restarts": 0, "num-server-rounds": 2,
                             "out-dir": str(tmp_path / "serial")})
    cfg2 = parse_run_config({**cfg0.to_run_config(), "attack-workers": 2, "out-dir": str(tmp_path / "workers")})
    rounds = {r: uploads(cfg0, r) for r in (1, 2)}

    def run(cfg):
        hook = AttackHook(Spy(base_strategy(cfg, rounds[1][0], None)), cfg, cfg.out_dir)
        got = {}
        for r in (1, 2):
            hook.configure_fit(r, ndarrays_to_parameters(rounds[r][0]), None)
            _, got[r] = hook.aggregate_fit(r, rounds[r][1], [])
        return hook, got

    serial, expected = run(cfg0)
    assert not serial.has_late_figures(1) and expected[1]["attack_images"] == 4
    hook, now = run(cfg2)
    workers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == os.getpid()
               and b"multiprocessing.spawn" in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(workers) == 2
    assert not any(k.startswith("attack_") for r in (1, 2) for k in now[r])  # the figures come later
    assert hook.has_late_figures(1) and hook.has_late_figures(2)
    for r in (1, 2):
        late = hook.take_figures(r)
        assert late.pop("attack_seconds") > 0
        assert late == {k: v for k, v in expected[r].items() if k.startswith("attack") and k != "attack_seconds"}
        assert (tmp_path / "workers" / "attack" / f"round-{r:03d}.npz").exists()
    assert not hook.has_late_figures(2)
    # after the run's last round the workers are stopped
    assert not [p for p in workers if os.path.exists(f"/proc/{p}") and _parent(p) == os.getpid()]


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_a_dead_attack_worker_gives_the_round_an_attack_error_and_the_round_goes_on(tmp_path):
    import os
    import signal

    cfg = parse_run_config({"num-clients": 2, "local-steps": 1, "batch-size": 1, "attack-every": 1,
                            "attack-workers": 1, "num-server-rounds": 1, "out-dir": str(tmp_path)})
    global_w, results = uploads(cfg)
    hook = AttackHook(Spy(base_strategy(cfg, global_w, None)), cfg, tmp_path)
    (pid,) = hook.workers.started()
    os.kill(pid, signal.SIGKILL)
    hook.configure_fit(1, ndarrays_to_parameters(global_w), None)
    params, now = hook.aggregate_fit(1, results, [])
    assert params is not None and hook.has_late_figures(1)
    late = hook.take_figures(1)
    assert "attack_error" in late and not hook.has_late_figures(1)
