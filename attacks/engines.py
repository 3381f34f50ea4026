"""The optimisation engines behind :func:`attacks.inversion.invert_gradients`.

``batched`` (default) runs one L-BFGS per target, all advanced together in one
batch (:class:`attacks.lbfgs.LBFGSMemory`); ``loop`` runs one ``torch.optim.LBFGS`` per
target with plain autograd (the papers' way); ``joint`` one ``torch.optim.LBFGS`` over all
targets (for comparison only).  All share the initial points, the iteration budget and the
stopping rules, so that they can be compared on the same targets.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from attacks.gradients import per_example_grad_fn
from attacks.layerwise import flatten_observed, fused_loss_grad_fn
from attacks.lbfgs import YS_MIN, LBFGSMemory
from attacks.objectives import EPS, matching_loss
from attacks.settings import AttackConfig

STALL_STEP = 1e-9  # a step whose largest entry is below this ends the try (torch's tolerance_change)
PROGRESS_STUCK = 0.5  # above restart_above, a try must halve its loss every `patience` iterations
PROGRESS_FLAT = 0.9   # below it, a try must gain 10% every `patience` iterations


def init_point(seed: int, target: int, attempt: int, n_img: int, n_lab: int, init: str) -> Tensor:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, target, attempt])
    gen = torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))
    img = torch.randn(n_img, generator=gen) if init == "randn" else torch.rand(n_img, generator=gen)
    lab = torch.randn(n_lab, generator=gen)
    return torch.cat([img, lab])



def closure_step(loss: Tensor, z: Tensor, last: dict[str, Tensor]) -> Tensor:
    """The end of a ``torch.optim.LBFGS`` closure of the loop runner: the gradient of
    ``loss`` at ``z`` set as ``z.grad``, the point, loss and gradient finiteness recorded in
    ``last`` (what the runner's stopping rules read); returns the detached loss."""
    (gz,) = torch.autograd.grad(loss, z)
    z.grad = gz
    last["z"] = z.detach().clone()
    last["loss"] = loss.detach().double()
    last["finite_grad"] = torch.isfinite(gz).all()
    return loss.detach()

class Problem:
    """Matching loss and its gradient for any subset of targets, over flat variables z."""

    def __init__(self, model: nn.Module, names: list[str], params: dict[str, Tensor],
                 buffers: dict[str, Tensor], observed: list[Tensor], labels: Tensor,
                 input_shape: tuple[int, ...], num_classes: int, cfg: AttackConfig,
                 device: torch.device) -> None:
        self.model, self.names, self.params, self.buffers = model, names, params, buffers
        self.observed, self.labels, self.cfg, self.device = observed, labels, cfg, device
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.n_img = int(np.prod(input_shape))
        self.n_lab = num_classes if cfg.method == "dlg" else 0
        self.soft = cfg.method == "dlg"
        self.vgrad = per_example_grad_fn(model, names, params, buffers, soft=self.soft)
        self.fused = None if cfg.grad_impl == "vmap" else \
            fused_loss_grad_fn(model, names, params, self.soft, cfg.objective)
        self.observed_flat = flatten_observed(observed) if self.fused is not None else None

    def split(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        x = z[:, : self.n_img].reshape(-1, *self.input_shape)
        y = z[:, self.n_img:] if self.soft else None
        return x, y

    def _subset(self, idx: Tensor) -> tuple[list[Tensor], Tensor]:
        """Observed gradients and labels of targets ``idx``, cached while ``idx`` is the same
        tensor (the batched engine keeps it until the batch changes); flattened to ``[U, P]``
        for the fused path."""
        cached = getattr(self, "_cache", None)
        if cached is None or cached[0] is not idx:
            obs = self.observed_flat[idx] if self.fused is not None \
                else [o[idx] for o in self.observed]
            self._cache = (idx, obs, self.labels[idx])
        return self._cache[1], self._cache[2]

    def batched(self, z: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Loss ``[U]`` (float64) and its gradient ``[U, N]`` for targets ``idx`` at ``z``."""
        if self.fused is not None:
            x, y = self.split(z.detach())
            obs, labels = self._subset(idx)
            loss, gx, gy = self.fused(x, y if self.soft else labels, obs)
            gz = gx.reshape(z.shape[0], -1) if gy is None else torch.cat([gx.flatten(1), gy], 1)
            return loss.double(), gz
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            x, y = self.split(z)
            obs, labels = self._subset(idx)
            dummy = self.vgrad(x, y if self.soft else labels)
            loss = matching_loss(dummy, obs, self.cfg.objective)
            (gz,) = torch.autograd.grad(loss.sum(), z)
        return loss.detach().double(), gz.detach()

    def single_closure(self, z: Tensor, t: int, last: dict[str, Tensor]) -> Callable[[], Tensor]:
        """Closure for ``torch.optim.LBFGS`` on target ``t`` alone, with plain autograd (the
        papers' way); records the evaluated point and loss in ``last``."""
        obs = [o[t:t + 1] for o in self.observed]
        leaves = [self.params[n].detach().clone().requires_grad_(True) for n in self.names]
        pdict = dict(zip(self.names, leaves))
        target = self.labels[t:t + 1]

        def closure() -> Tensor:
            x, y = self.split(z.unsqueeze(0))
            out = functional_call(self.model, (pdict, self.buffers), (x,))
            if self.soft:
                ce = -(F.softmax(y, -1) * F.log_softmax(out, -1)).sum()
            else:
                ce = F.cross_entropy(out, target)
            dummy = torch.autograd.grad(ce, leaves, create_graph=True)
            loss = matching_loss([d.unsqueeze(0) for d in dummy], obs, self.cfg.objective)[0]
            return closure_step(loss, z, last)

        return closure



def _record_best(best_z: Tensor, best_loss: Tensor, idx: Tensor, z: Tensor, loss: Tensor) -> None:
    better = torch.isfinite(loss) & (loss < best_loss[idx])
    if better.any():
        sel = idx[better]
        best_z[sel] = z[better].detach()
        best_loss[sel] = loss[better]


def run_batched(prob: Problem, todo: Tensor, scale: Tensor, best_z: Tensor,
                 best_loss: Tensor, iters: Tensor, tries: Tensor) -> None:
    """One L-BFGS per target, all advanced together in one batch of at most ``batch_size``.

    Every iteration evaluates the loss and gradient of all targets in the batch in one
    call of :meth:`Problem.batched` (the hand-written double back-propagation of
    :mod:`attacks.layerwise` for a plain layer chain, else vmap and autograd).  A target that was just (re-)initialised is only evaluated (no step);
    the others take the step ``t d`` with ``d`` from :meth:`LBFGSMemory.direction` and ``t``
    as in ``torch.optim.LBFGS`` without line search.  A try ends when the relative loss is
    below ``tol`` (converged), the loss is non-finite or exploded (diverged), no step is
    possible (stalled), the relative loss made too little progress in ``patience``
    iterations (plateau, see :class:`AttackConfig`) or ``max_iter`` iterations were spent;
    the target then restarts from a new init if it has tries left and its best relative
    loss is above ``restart_above``, or leaves the
    batch, and a waiting target takes its place.
    """
    cfg, dev = prob.cfg, prob.device
    N = best_z.shape[1]
    queue = todo.to(dev)
    mem = LBFGSMemory(0, N, cfg.history_size, dev)
    st: dict[str, Tensor] = {
        "tid": torch.zeros(0, dtype=torch.long, device=dev),
        "z": torch.zeros(0, N, device=dev),
        "g": torch.zeros(0, N, device=dev),
        "loss0": torch.zeros(0, dtype=torch.float64, device=dev),
        "ref": torch.zeros(0, dtype=torch.float64, device=dev),   # rel loss at the last halving
        "ref_it": torch.zeros(0, dtype=torch.long, device=dev),
        "it": torch.zeros(0, dtype=torch.long, device=dev),       # iterations in this try
        "attempt": torch.zeros(0, dtype=torch.long, device=dev),
        "fresh": torch.zeros(0, dtype=torch.bool, device=dev),    # new init, not evaluated yet
        "first": torch.zeros(0, dtype=torch.bool, device=dev),    # next step is the try's first
    }

    def init_rows(rows: Tensor) -> None:
        for r in rows.tolist():
            st["z"][r] = init_point(cfg.seed, int(st["tid"][r]), int(st["attempt"][r]),
                                     prob.n_img, prob.n_lab, cfg.init).to(dev)
        st["g"][rows] = 0.0
        mem.reset(rows)
        st["it"][rows] = 0
        st["fresh"][rows] = True
        st["first"][rows] = False

    def refill() -> None:
        nonlocal queue
        k = min(cfg.batch_size - st["tid"].numel(), queue.numel())
        if k <= 0:
            return
        u = st["tid"].numel()
        new, queue = queue[:k], queue[k:]
        for name, v in st.items():
            st[name] = torch.cat([v, new if name == "tid" else v.new_zeros((k, *v.shape[1:]))])
        mem.append(k)
        init_rows(torch.arange(u, u + k, device=dev))

    with torch.no_grad():  # the gradients come from Problem.batched; no graph here
        refill()
        while st["tid"].numel() > 0:
            tid, z, g, first = st["tid"], st["z"], st["g"], st["first"]
            fresh = st["fresh"]
            stepping = ~fresh
            d = mem.direction(g)
            gtd = torch.linalg.vecdot(g, d)
            t_first = torch.clamp(1.0 / g.abs().sum(1).clamp_min(EPS), max=1.0) * cfg.lr
            t = torch.where(first, t_first, cfg.lr)
            # as torch.optim.LBFGS: no step along a direction that is not a descent direction
            t = torch.where(fresh | (gtd > 0), 0.0, t)
            step = t[:, None] * d
            z_new = z + step
            loss, g_new = prob.batched(z_new, tid)
            finite = torch.isfinite(loss) & torch.isfinite(g_new).all(1)
            y = g_new - g
            ys = torch.linalg.vecdot(step, y)  # in the parameters' dtype, as torch.optim.LBFGS
            mem.push(stepping & finite & (ys > YS_MIN), step, y, g_next=g_new)

            tid_cpu = tid.cpu()
            iters[tid_cpu[stepping.cpu()]] += 1
            tries[tid_cpu[fresh.cpu()]] += 1
            _record_best(best_z, best_loss, tid, z_new, torch.where(finite, loss, torch.inf))

            rel = loss / scale[tid]
            it = st["it"] + stepping.long()
            factor = torch.where(rel > cfg.restart_above, PROGRESS_STUCK, PROGRESS_FLAT)
            progressed = fresh | (rel < factor * st["ref"])
            st.update(z=z_new, g=g_new, it=it, first=fresh.clone(), fresh=torch.zeros_like(fresh),
                      loss0=torch.where(fresh, loss, st["loss0"]),
                      ref=torch.where(progressed, rel, st["ref"]),
                      ref_it=torch.where(progressed, it, st["ref_it"]))

            converged = finite & (rel < cfg.tol)
            diverged = ~finite | (loss > cfg.diverge_factor * st["loss0"])
            stalled = stepping & ((t == 0) | (step.abs().amax(1) <= STALL_STEP))
            plateau = (it - st["ref_it"]) >= cfg.patience
            end = converged | diverged | stalled | plateau | (it >= cfg.max_iter)
            if not bool(end.any()):
                continue
            again = end & ~converged & (st["attempt"] < cfg.restarts) \
                & (best_loss[tid] / scale[tid] > cfg.restart_above)
            keep = ~end | again
            if not bool(keep.all()):
                rows = torch.nonzero(keep).flatten()
                for name in st:
                    st[name] = st[name][rows]
                again = again[rows]
                mem.keep(rows)
            if bool(again.any()):
                rows = torch.nonzero(again).flatten()
                st["attempt"][rows] += 1
                init_rows(rows)
            refill()


def run_loop(prob: Problem, todo: Tensor, scale: Tensor, best_z: Tensor,
              best_loss: Tensor, iters: Tensor, tries: Tensor) -> None:
    """One ``torch.optim.LBFGS`` per target and try, with plain autograd (the papers' way).

    ``step()`` is called with ``max_iter=1``, so the stopping rules of the batched engine
    (converged, diverged, stalled, plateau, ``max_iter``) are checked after every iteration.
    """
    cfg, dev = prob.cfg, prob.device
    for t in todo.tolist():
        idx = torch.tensor([t], device=dev)
        for attempt in range(cfg.restarts + 1):
            tries[t] += 1
            z = init_point(cfg.seed, t, attempt, prob.n_img, prob.n_lab, cfg.init).to(dev)
            z.requires_grad_(True)
            opt = torch.optim.LBFGS([z], lr=cfg.lr, max_iter=1, history_size=cfg.history_size,
                                    tolerance_grad=0.0, tolerance_change=0.0,
                                    line_search_fn=None)
            last: dict[str, Tensor] = {}
            closure = prob.single_closure(z, t, last)
            loss0 = ref = None
            it = ref_it = 0
            converged = False
            while True:
                before = z.detach().clone()
                opt.step(closure)  # evaluates at `before`, then moves z
                cur = last["loss"].reshape(1)
                finite = bool(torch.isfinite(cur).all()) and bool(last["finite_grad"])
                _record_best(best_z, best_loss, idx, last["z"].reshape(1, -1),
                             cur if finite else torch.full_like(cur, float("inf")))
                rel = float(cur / scale[t])
                if loss0 is None:
                    loss0, ref = cur, rel
                else:
                    it += 1
                    iters[t] += 1
                    factor = PROGRESS_STUCK if rel > cfg.restart_above else PROGRESS_FLAT
                    if rel < factor * ref:
                        ref, ref_it = rel, it
                if not finite or bool(cur > cfg.diverge_factor * loss0):
                    break
                if rel < cfg.tol:
                    converged = True
                    break
                if it >= cfg.max_iter or it - ref_it >= cfg.patience:
                    break
                if float((z.detach() - before).abs().max()) <= STALL_STEP:
                    break  # no descent direction or no progress left (stalled)
            if converged or float(best_loss[t] / scale[t]) <= cfg.restart_above:
                break


def run_joint(prob: Problem, todo: Tensor, scale: Tensor, best_z: Tensor,
               best_loss: Tensor, iters: Tensor, tries: Tensor) -> None:
    """One ``torch.optim.LBFGS`` over all pending targets at once (summed loss, shared step
    and history); a try ends when every target is below ``tol``, one is non-finite, or after
    ``max_iter`` iterations.  For comparison only."""
    cfg, dev = prob.cfg, prob.device
    pending = todo.clone()
    for attempt in range(cfg.restarts + 1):
        if pending.numel() == 0:
            break
        tries[pending.cpu()] += 1
        z = torch.stack([init_point(cfg.seed, t, attempt, prob.n_img, prob.n_lab, cfg.init)
                         for t in pending.tolist()]).to(dev).requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=cfg.lr, max_iter=1, history_size=cfg.history_size,
                                tolerance_grad=0.0, tolerance_change=0.0, line_search_fn=None)
        last: dict[str, Tensor] = {}

        def closure(z: Tensor = z, idx: Tensor = pending, last: dict = last) -> Tensor:
            loss, gz = prob.batched(z.detach(), idx)
            z.grad = gz
            last["loss"] = loss
            last["z"] = z.detach().clone()
            return loss.sum().float()

        for step in range(cfg.max_iter + 1):
            opt.step(closure)
            loss = last["loss"]
            _record_best(best_z, best_loss, pending, last["z"],
                         torch.where(torch.isfinite(loss), loss, torch.inf))
            if step > 0:
                iters[pending.cpu()] += 1
            if not bool(torch.isfinite(loss).all()) or bool((loss / scale[pending] < cfg.tol).all()):
                break
        pending = pending[best_loss[pending] / scale[pending] > cfg.restart_above]


RUNNERS = {"batched": run_batched, "loop": run_loop, "joint": run_joint}
