"""Inverting the update a client really uploads: N images, K local SGD steps of B, BatchNorm.

A client that trains ``K`` plain SGD steps (learning rate ``lr``, batches of ``B`` drawn in
shuffled epochs from its ``N`` images) uploads ``theta_K``; the server knows ``theta_0`` (the
global weights it sent).  The attack (the multi-step "user unroll" of Geiping et al. 2020
and breaching; Dimitrov et al. 2022) optimises N dummy images ``x_1..x_N`` so that the same
K steps, simulated on them, reproduce the observed update:

    theta_0' = theta_0,   theta_{k+1}' = theta_k' - lr * grad L(theta_k'; x_{b_k}, y_{b_k})
    x* = argmin_x  D( (theta_0 - theta_K') / lr,  (theta_0 - theta_K) / lr )  [+ priors]

differentiated through all K steps with :mod:`torch.func` (``D`` is one of
:func:`attacks.objectives.matching_loss`'s objectives; both sides are in gradient units, so
that for K = 1 the left side is exactly the batch's mean gradient and for N = B = K = 1 the
problem is the single-image iDLG problem of :mod:`attacks.engines`).

Batch order (what the simulation assumes)
-----------------------------------------
The server knows N (``FitRes.num_examples``), K and B, hence the size of every batch, but
not which image went into which batch (the client's seeded permutations).  The simulated
schedule :func:`assumed_batches` lays the dummies out in the order ``0..N-1`` and cuts the
epochs exactly as the client does (:func:`fl_defense.task.local_batches` with the identity
permutation in every epoch):

* one epoch (``K * min(B, N) <= N``) and full-batch steps (``B >= N``, every step sees all N
  images, so the order is irrelevant): no assumption is needed.  The dummies are free
  variables, so assigning dummy j to the batch of private image j is without loss of
  generality; the labels of each dummy are fixed by :func:`assign_labels` (counts from the
  label estimator, sorted), which is where an error of order ``lr^2`` can enter: to first
  order in ``lr`` the update only depends on how often each (image, label) appears, not on
  which batch it was in.
* several epochs with ``B < N``: every epoch is assumed to repeat the first one's order.
  The real client reshuffles; the error this makes is also of second order in ``lr`` (the
  first-order update is the sum of per-appearance gradients at ``theta_0``), and the leak
  map (``benchmarks/leak_map.py``) measures what it costs.

BatchNorm
---------
Models with BatchNorm are simulated in train mode, each batch normalised with its own
(dummy) statistics, as the client does.  The running statistics the client uploads after K
steps are ``r_K = (1 - m)^K r_0 + sum_k m (1 - m)^(K-1-k) s_k`` with ``s_k`` the batch
mean and unbiased variance of every BatchNorm input at step k (momentum ``m``); the
simulation computes them from the dummies, and with ``bn_weight > 0`` (the aware attacker)
the squared distance to the uploaded statistics is added to the objective, relative to its
own scale (GradInversion, Yin et al. 2021, matches batch statistics to stored ones).

Priors
------
``tv_weight > 0`` adds the anisotropic total variation of the dummies (mean absolute
difference of neighbouring pixels, Rudin, Osher & Fatemi 1992) to the relative loss, as
Geiping et al. 2020 do for colour images.

References
----------
Geiping, Bauermeister, Droege & Moeller (2020). Inverting Gradients -- How easy is it to
break privacy in federated learning? NeurIPS.
Dimitrov, Balunovic, Konstantinov & Vechev (2022). Data Leakage in Federated Averaging.
TMLR.
Yin, Mallya, Vahdat, Alvarez, Kautz & Molchanov (2021). See through Gradients: Image Batch
Recovery via GradInversion. CVPR.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from attacks.engines import closure_step, init_point
from attacks.layerwise import chain_forward, flatten_observed, fused_loss_grad_fn, trainable_chain
from attacks.objectives import EPS, OBJECTIVES, matching_loss
from attacks.settings import AttackConfig


CHAIN_MAX = 48  # the im2col path for at most this many image-steps per evaluation (targets x sum of batch sizes)


def assumed_batches(n_images: int, local_steps: int, batch_size: int) -> list[np.ndarray]:
    """The batches (positions into the N dummies) the simulation trains on: the client's
    epoch cutting (:func:`fl_defense.task.local_batches`) with the identity order in every
    epoch (see the module docstring)."""
    if min(n_images, local_steps, batch_size) < 1:
        raise ValueError(f"n_images, local_steps and batch_size must be >= 1; got "
                         f"{n_images}, {local_steps}, {batch_size}")
    size = min(batch_size, n_images)
    order = np.empty(0, dtype=np.int64)
    out = []
    for _ in range(local_steps):
        if len(order) < size:
            order = np.concatenate([order, np.arange(n_images)])
        out.append(order[:size].copy())
        order = order[size:]
    return out


def one_batch(batches: Sequence[np.ndarray], n_images: int) -> bool:
    """Whether the schedule is one SGD step on one batch holding each of the N images once
    (then the pseudo-gradient is the mean of N per-example gradients, whatever the order)."""
    return len(batches) == 1 and np.array_equal(np.sort(np.asarray(batches[0])), np.arange(n_images))


def appearances(batches: Sequence[np.ndarray], n_images: int) -> np.ndarray:
    """How many times each of the N positions is trained on in ``batches``."""
    return np.bincount(np.concatenate(batches), minlength=n_images)


@dataclass(frozen=True)
class BNLayer:
    """A BatchNorm layer whose running statistics the simulation tracks."""

    module: str       # name in named_modules
    mean_key: str     # state_dict keys of its running statistics
    var_key: str
    momentum: float


def bn_layers(model: nn.Module) -> list[BNLayer]:
    """The BatchNorm layers of ``model`` that track running statistics, in module order."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            if m.momentum is None:
                raise ValueError(f"BatchNorm {name!r} uses a cumulative average (momentum=None); "
                                 "the simulation needs a momentum")
            prefix = f"{name}." if name else ""
            out.append(BNLayer(name, prefix + "running_mean", prefix + "running_var", float(m.momentum)))
    return out


class Simulator:
    """The client's K local steps as a pure function of (weights, dummies, labels).

    A private copy of the model is used with :func:`torch.func.functional_call`; its
    BatchNorm layers normalise with batch statistics and keep no running statistics (they
    are computed here, differentiably, from the inputs a forward pre-hook records).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], batches: Sequence[np.ndarray],
                 lr: float, soft: bool) -> None:
        self.model = copy.deepcopy(model).train()
        self.names = list(names)
        self.batches = [torch.as_tensor(b, dtype=torch.long) for b in batches]
        self._whole = [np.array_equal(np.asarray(b), np.arange(len(b))) for b in batches]
        self._aux = (False, False)  # (batch statistics, softmax sums) wanted by the current run
        self.lr = float(lr)
        self.soft = soft
        self.bn = bn_layers(model)
        self.chain = trainable_chain(model, self.names)
        self.image_steps = int(sum(len(b) for b in batches))
        self._record: list[Tensor] | None = None
        modules = dict(self.model.named_modules())
        for layer in self.bn:
            m = modules[layer.module]
            m.track_running_stats = False  # normalise by batch statistics, mutate nothing
            m.running_mean = None
            m.running_var = None
            m.num_batches_tracked = None
            m.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if self._record is not None:
            self._record.append(args[0])

    def _step_loss(self, p: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        self._record = []
        out = functional_call(self.model, p, (x,))
        inputs, self._record = self._record, None
        if self.soft:
            loss = -(F.softmax(y, -1) * F.log_softmax(out, -1)).sum(-1).mean()
        else:
            loss = F.cross_entropy(out, y)
        want_stats, want_probs = self._aux
        stats = []
        for inp in inputs if want_stats else ():
            dims = [0, *range(2, inp.ndim)]
            stats.append(inp.mean(dims))
            stats.append(inp.var(dims, unbiased=True))
        probs = F.softmax(out.detach(), -1).sum(0) if want_probs else out.new_zeros(0)
        return loss, (stats, probs)

    def run(self, p0: dict[str, Tensor], x: Tensor, y: Tensor, functional: bool = True,
            stats: bool = True, probs: bool = True) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """Simulate the K steps from ``p0`` on dummies ``x [N, C, H, W]`` with labels ``y``
        (``[N]`` class indices, or ``[N, classes]`` logits when soft).

        Returns ``(pseudo-gradient (p0 - p_K) / lr per parameter, the running-statistic
        increments sum_k m (1 - m)^(K-1-k) s_k per BatchNorm buffer (mean, var, ...; empty
        unless ``stats``), softmax outputs summed over every appearance of every image
        [classes] (``None`` unless ``probs``))``.  ``functional``: torch.func.grad
        (vmap-able) or torch.autograd.grad with a graph.
        """
        p = dict(p0)
        stat_sum: list[Tensor] = []
        prob_sum = None
        k_total = len(self.batches)
        self._aux = (stats and bool(self.bn), probs)
        for k, idx in enumerate(self.batches):
            whole = self._whole[k] and len(idx) == x.shape[0]
            xb, yb = (x, y) if whole else (x[idx], y[idx])
            if functional:
                g, (step_stats, step_probs) = grad(self._step_loss, has_aux=True)(p, xb, yb)
                g = [g[n] for n in self.names]
            else:
                loss, (step_stats, step_probs) = self._step_loss(p, xb, yb)
                g = torch.autograd.grad(loss, [p[n] for n in self.names], create_graph=True)
            if probs:
                prob_sum = step_probs if prob_sum is None else prob_sum + step_probs
            p = {n: p[n] - self.lr * gn for n, gn in zip(self.names, g)}
            if step_stats:
                decay = [self.bn[i // 2].momentum * (1 - self.bn[i // 2].momentum) ** (k_total - 1 - k)
                         for i in range(len(step_stats))]
                step_stats = [d * s for d, s in zip(decay, step_stats)]
                stat_sum = step_stats if not stat_sum else [a + b for a, b in zip(stat_sum, step_stats)]
        pseudo = [(p0[n] - p[n]) / self.lr for n in self.names]
        return pseudo, stat_sum, prob_sum

    def run_targets(self, p0: dict[str, Tensor], shared: bool, x: Tensor, y: Tensor) -> list[Tensor]:
        """The pseudo-gradients ``[T, ...]`` per parameter of T targets at once, for a plain
        layer chain (``self.chain``), by plain autograd over
        :func:`attacks.layerwise.chain_forward` (no vmap): ``x [T, N, C, H, W]``, ``y [T, N]``
        (or ``[T, N, classes]`` logits when soft), ``p0`` shared (``shared``) or ``[T, ...]``.
        The same values as :meth:`run` under vmap; differentiable with respect to ``x``."""
        if self.chain is None:
            raise ValueError("run_targets needs a plain layer chain (attacks.layerwise.layer_chain)")
        t = x.shape[0]
        base = {n: p0[n].detach().requires_grad_(True) for n in self.names}
        start = {n: v.expand(t, *v.shape) if shared else v for n, v in base.items()}
        p = start
        for k, idx in enumerate(self.batches):
            whole = self._whole[k] and len(idx) == x.shape[1]
            xb, yb = (x, y) if whole else (x[:, idx], y[:, idx])
            out = chain_forward(self.chain, p, xb.reshape(-1, *xb.shape[2:]), t)
            if self.soft:
                per = -(F.softmax(yb.reshape(-1, yb.shape[-1]), -1) * F.log_softmax(out, -1)).sum(-1)
            else:
                per = F.cross_entropy(out, yb.reshape(-1), reduction="none")
            loss = per.view(t, -1).mean(1).sum()  # targets are independent: the sum's gradient is per target
            g = torch.autograd.grad(loss, [p[n] for n in self.names], create_graph=True)
            p = {n: p[n] - self.lr * gn for n, gn in zip(self.names, g)}
        return [(start[n] - p[n]) / self.lr for n in self.names]


def total_variation(x: Tensor, start_dim: int = 0) -> Tensor:
    """Anisotropic total variation of images ``[..., H, W]``: the mean absolute difference of
    vertical and of horizontal neighbours, summed; averaged over the dimensions from
    ``start_dim`` on (0: one number; 1: one per leading entry)."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(start_dim).mean(-1)
            + (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(start_dim).mean(-1))


class MultiStepProblem:
    """The matching loss of T client updates, over flat variables ``z [T, N*C*H*W (+N*classes)]``.

    Implements the Problem protocol of :mod:`attacks.engines` (``cfg``, ``device``,
    ``n_img``, ``n_lab``, ``batched``, ``single_closure``), so any of its runners can
    optimise it.  All targets share N, K, B and the objective; each has its own global
    weights (or one set shared by all), observed pseudo-gradient, BatchNorm statistics and
    labels.

    Args:
        model: the architecture (used functionally through a private copy).
        names: trainable parameter names, in ``named_parameters`` order.
        params: ``{name: [T, ...]}`` global weights per target, or ``{name: [...]}`` shared.
        shared: whether ``params`` is shared by all targets.
        observed: per parameter ``[T, ...]``: ``(global - upload) / lr``.
        stats_observed: per BatchNorm buffer (mean, var of each layer in order) ``[T, C]``:
            ``upload - (1 - m)^K global``, the part of the uploaded statistics that the
            batches wrote (empty when the model has no BatchNorm).
        labels: ``[T, N]`` labels of the dummies (hard labels; ignored for ``dlg``).
        batches: the simulated schedule (:func:`assumed_batches`).
        scale: ``[T]`` the gradient term's normaliser (:func:`attacks.objectives.loss_scale`).
        bn_weight, tv_weight: weights of the statistics term and of the TV prior, both
            relative to ``scale`` (0: off).
    """

    def __init__(self, model: nn.Module, names: list[str], params: dict[str, Tensor], shared: bool,
                 observed: list[Tensor], stats_observed: list[Tensor], labels: Tensor,
                 batches: Sequence[np.ndarray], lr: float, input_shape: tuple[int, ...],
                 num_classes: int, cfg: AttackConfig, device: torch.device, scale: Tensor,
                 bn_weight: float = 0.0, tv_weight: float = 0.0, start: Tensor | None = None,
                 stats_support: list[Tensor] | None = None, simulator: Simulator | None = None) -> None:
        self.cfg, self.device, self.names = cfg, device, names
        self.params, self.shared = params, shared
        self.observed, self.stats_observed, self.labels = observed, stats_observed, labels
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.n_images = int(labels.shape[1])
        self.n_img = self.n_images * int(np.prod(input_shape))
        self.soft = cfg.method == "dlg"
        self.n_lab = self.n_images * num_classes if self.soft else 0
        self.sim = simulator if simulator is not None else Simulator(model, names, batches, lr, self.soft)
        self.scale = scale
        self.bn_weight = float(bn_weight) if stats_observed else 0.0
        self.tv_weight = float(tv_weight)
        if stats_support is None or not OBJECTIVES.get(cfg.objective).support:
            stats_support = [torch.ones_like(o, dtype=torch.bool) for o in stats_observed]
        self.stats_support = stats_support
        self.stats_scale = (sum(((o * m).double() ** 2).flatten(1).sum(1) for o, m in zip(stats_observed, stats_support))
                            if self.bn_weight > 0 else scale)
        self.offset = None if start is None else self._offsets(start.to(device))
        self.fused = self._one_batch_fused(model, batches)
        self.observed_flat = flatten_observed(observed) if self.fused is not None else None
        self.chain_targets = (CHAIN_MAX // max(self.sim.image_steps, 1)
                              if self.sim.chain is not None and cfg.grad_impl != "vmap" else 0)
        self._vloss = vmap(self._target_loss, in_dims=(0, 0, None if shared else 0, 0, 0, 0, 0, 0),
                           randomness="different")

    def _one_batch_fused(self, model: nn.Module, batches: Sequence[np.ndarray]):
        """The closed-form double back-propagation of :mod:`attacks.layerwise` when the
        simulated update is one SGD step on one batch of all N images of a plain layer
        chain at shared weights, with no statistics term (a TV prior is added to its value
        and gradient by autograd on the images alone): the pseudo-gradient is then
        the mean of the N per-example gradients (``group=N``), the same value the
        simulation computes through ``torch.func``, at a fraction of its cost.  ``None``
        otherwise (the vmap path)."""
        if not (one_batch(batches, self.n_images) and self.shared and self.bn_weight == 0
                and self.cfg.grad_impl != "vmap"):
            return None
        return fused_loss_grad_fn(model, self.names, self.params, self.soft, self.cfg.objective)

    def _offsets(self, start: Tensor) -> Tensor:
        """Warm start: the runners start target t's first try at ``init_point(seed, t, 0)``;
        the problem's variables are shifted by ``start[t] - init_point(seed, t, 0)`` so that
        the first try starts at ``start[t]`` (a restart at ``start[t]`` plus the difference
        of two seeded inits)."""
        init = torch.stack([init_point(self.cfg.seed, t, 0, self.n_img, self.n_lab, self.cfg.init)
                            for t in range(start.shape[0])]).to(start.device)
        return start - init

    def variables(self, z: Tensor, idx: Tensor) -> Tensor:
        """The problem's variables (images, then label logits) at the runner's point ``z``
        of targets ``idx``."""
        return z if self.offset is None else z + self.offset[idx]

    def split(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        u = z.shape[0]
        x = z[:, : self.n_img].reshape(u, self.n_images, *self.input_shape)
        y = z[:, self.n_img:].reshape(u, self.n_images, self.num_classes) if self.soft else None
        return x, y

    def _target_loss(self, x: Tensor, y: Tensor, p0: dict[str, Tensor], obs: list[Tensor],
                     stats_obs: list[Tensor], support: list[Tensor], scale: Tensor, stats_scale: Tensor,
                     functional: bool = True) -> Tensor:
        pseudo, stats, _ = self.sim.run(p0, x, y, functional=functional, stats=self.bn_weight > 0, probs=False)
        loss = matching_loss([d.unsqueeze(0) for d in pseudo], [o.unsqueeze(0) for o in obs],
                             self.cfg.objective)[0]
        if self.bn_weight > 0:
            diffs = [(s - o) * m for s, o, m in zip(stats, stats_obs, support)]
            bn = sum((d * d).sum() for d in diffs)
            loss = loss + self.bn_weight * (scale / stats_scale.clamp_min(EPS)).to(loss.dtype) * bn
        if self.tv_weight > 0:
            loss = loss + self.tv_weight * scale.to(loss.dtype) * total_variation(x)
        return loss

    def _flat_subset(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Flattened observed updates ``[U, P]`` and labels of targets ``idx`` (the closed
        form's inputs), cached while ``idx`` is the same tensor."""
        cached = getattr(self, "_flat_cache", None)
        if cached is None or cached[0] is not idx:
            self._flat_cache = (idx, self.observed_flat[idx], self.labels[idx])
        return self._flat_cache[1:]

    def _subset(self, idx: Tensor):
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] is not idx:
            p0 = self.params if self.shared else {n: v[idx] for n, v in self.params.items()}
            self._cache = (idx, p0, [o[idx] for o in self.observed],
                           [o[idx] for o in self.stats_observed], [m[idx] for m in self.stats_support],
                           self.labels[idx], self.scale[idx], self.stats_scale[idx])
        return self._cache[1:]

    def _tv(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The TV prior's value ``[U]`` and its gradient ``[U, N*C*H*W]`` at images ``x``."""
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            tv = self.tv_weight * self.scale[idx].to(leaf.dtype) * total_variation(leaf, start_dim=1)
            (grad,) = torch.autograd.grad(tv.sum(), leaf)
        return tv.detach(), grad.reshape(x.shape[0], -1)

    def batched(self, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Loss ``[U]`` (float64) and its gradient ``[U, n_vars]`` for targets ``idx`` at ``z``."""
        if self.fused is not None:
            u, n = z.shape[0], self.n_images
            x, y = self.split(self.variables(z.detach(), idx))
            obs, labels = self._flat_subset(idx)
            loss, gx, gy = self.fused(x.reshape(u * n, *self.input_shape),
                                      y.reshape(u * n, -1) if self.soft else labels.reshape(-1), obs, group=n)
            gx = gx.reshape(u, -1)
            if self.tv_weight > 0:
                tv_loss, tv_grad = self._tv(x, idx)
                loss, gx = loss + tv_loss.to(loss.dtype), gx + tv_grad
            gz = gx if gy is None else torch.cat([gx, gy.reshape(u, -1)], 1)
            return loss.double(), gz
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            x, y = self.split(self.variables(z, idx))
            p0, obs, stats_obs, support, labels, scale, stats_scale = self._subset(idx)
            if z.shape[0] <= self.chain_targets:
                loss = self._chain_loss(x, y if self.soft else labels, p0, obs, scale)
            else:
                loss = self._vloss(x, y if self.soft else labels, p0, obs, stats_obs, support, scale, stats_scale)
            (gz,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach().double(), gz.detach()

    def _chain_loss(self, x: Tensor, y: Tensor, p0: dict[str, Tensor], obs: list[Tensor], scale: Tensor) -> Tensor:
        """``[U]`` losses through :meth:`Simulator.run_targets` (a plain chain: no BatchNorm
        statistics), with the same values as the vmap of :meth:`_target_loss`
        (``tests/test_multistep.py``); used up to ``CHAIN_MAX`` image-steps per call, above
        which the vmap is used (``benchmarks/bench_multistep.py --eval-cost`` compares the two)."""
        pseudo = self.sim.run_targets(p0, self.shared, x, y)
        loss = matching_loss(pseudo, obs, self.cfg.objective)
        if self.tv_weight > 0:
            loss = loss + self.tv_weight * scale.to(loss.dtype) * total_variation(x, start_dim=1)
        return loss

    def single_closure(self, z: Tensor, t: int, last: dict[str, Tensor]) -> Callable[[], Tensor]:
        """Closure for ``torch.optim.LBFGS`` on target ``t`` alone, with plain autograd."""
        p0 = {n: (v if self.shared else v[t]).detach().clone().requires_grad_(True)
              for n, v in self.params.items()}
        obs = [o[t] for o in self.observed]
        stats_obs = [o[t] for o in self.stats_observed]
        support = [m[t] for m in self.stats_support]
        labels = self.labels[t]
        scale = self.scale[t]
        stats_scale = self.stats_scale[t]

        tid = torch.tensor([t], device=z.device)

        def closure() -> Tensor:
            x, y = self.split(self.variables(z.unsqueeze(0), tid))
            loss = self._target_loss(x[0], y[0] if self.soft else labels, p0, obs, stats_obs, support, scale,
                                     stats_scale, functional=False)
            return closure_step(loss, z, last)

        return closure
