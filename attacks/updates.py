"""Inverting client uploads (:class:`attacks.threat.ThreatModel`), vectorised over targets.

:func:`invert_updates` reconstructs the N images behind each upload.  Targets of the same
shape (N images, K steps of B) form one :class:`attacks.multistep.MultiStepProblem` and are
optimised together by a runner of :mod:`attacks.engines` (``config.engine``, by default
the batched L-BFGS: every target keeps its own history, step, early stop and divergence
check).  Per target:

1. **Labels** (unless given).  One image, one step: iDLG's rule
   (:func:`attacks.labels.idlg_labels`).  One step of a batch: the closed-form counts of
   :meth:`attacks.label_search.LabelSearch.closed_form` (proxies: a black image and uniform
   noise, averaged).  Several steps: a beam search over hypotheses (labels of the dummy
   slots, batch by batch) ranked by the bias residual on the same proxies, starting from
   the closed form (:meth:`attacks.label_search.LabelSearch.search`).
2. **Screening** (several hypotheses): every hypothesis is attacked for
   ``screen_iter`` iterations, all of them in one vectorised call; the one with the lowest
   relative matching loss is continued (warm start) for the rest of the try's budget.
3. **Tries**: a target whose best relative loss is still above ``restart_above`` after a
   try gets another (``restarts``), from a new seeded start, with the labels searched again
   with its best reconstruction as the proxy (near the private images, the residual of the
   true labels is near zero), hypotheses already continued to a full try left out except, for
   several steps, the best try's labels, which are screened again from new starts (right
   labels can stall in a bad basin: on 64 digits in 4 full-batch steps, leaving them out too
   left 4 clients with the right labels and a blurred reconstruction; screening them again,
   48 instead of 44 of the 64 leaked with 4 hypotheses, 59 instead of 58 with 6).  For the
   simulated threat model the level is the lower ``retry_above`` (a wrong label makes the
   loss stall far above ``tol``).  The best try by matching loss is kept.

For one image and one step (``N = K = B = 1``) this is exactly the single-image iDLG
problem of :func:`attacks.inversion.invert_gradients`, run with the runner's own restarts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from attacks.engines import RUNNERS, Problem
from attacks.gradients import params_and_buffers
from attacks.label_search import hypotheses_for, searcher_for
from attacks.labels import observed_labels
from attacks.multistep import MultiStepProblem, Simulator, assumed_batches
from attacks.objectives import loss_scale
from attacks.settings import AttackConfig, resolve_device
from attacks.threat import ThreatModel
from fl_defense.config import ExperimentConfig

LABEL_SOURCES = ("infer", "given")


@dataclass(frozen=True)
class UpdateAttackOptions:
    """Settings of the multi-step attack beyond the optimiser's (:class:`AttackConfig`).

    Attributes:
        labels: ``"infer"`` (from the upload) or ``"given"`` (the true labels are handed to
            the attack: an upper bound, flagged as ``label_source = "given"`` in outputs).
        hypotheses: label hypotheses screened per target of several local steps (K > 1:
            the labels are not read in closed form, or are given but the batch order is
            unknown).  Measured on 16 clients of 4 digits in 4 full-batch steps of the DLG
            LeNet at lr 0.1 (one call), both with the retry rule below: 6 leaked 59/64
            images (label accuracy 0.984) against 48/64 (0.922) for 4, and with ``--seed 1``
            (other digits, other weights) 48/64 (0.906) against 40/64 (0.828), at 45.5-47.7 s
            per client against 39.1-41.1 s.
        one_step_hypotheses: the same for one local step, before ``one_step_ratio`` drops
            the far ones (4, unchanged: the residual is near exact there; with 6 and the retry
            rule of several steps applied to one step too, 63/64 leaked instead of 64/64 on
            64 digits at B = 4, and with the rule alone 15/16 instead of 16/16 on 16).
        screen_iter: L-BFGS iterations per hypothesis in the screening (at most the try's
            ``max_iter``, which the screening and the continuation share).
        screen_seeds: starts per hypothesis in the screening (a try with the right labels
            can still land in a bad basin: measured about half of them with 4 images in 4
            full-batch steps; the best of two is good three times in four).
        beam_width: beam width of the label search.
        one_step_ratio: for one local step (K = 1) the bias residual of the true labels is
            near zero and far below the others' (measured on 16 clients of 4 real digits:
            the best-ranked hypothesis was right for 16/16, the runner-up at least 2.5x
            worse): hypotheses whose residual exceeds this multiple of the best are
            dropped (most targets keep one, and skip the screening).
        bn_weight: weight of the BatchNorm running-statistics term (0: off; the aware
            attacker uses 1), relative to the gradient term.
        tv_weight: weight of the total-variation prior (0: off), relative to the matching
            loss of a zero update (config key ``attack-tv``).  Whether a try is good enough
            (``retry_above``) is read off the matching alone.
        init_image: ``[C, H, W]``, an image of the kind a server may know from public data
            (the mean of a public set of such images), or ``None``.  The first try of every
            target starts its dummies there, plus the seeded uniform start scaled to +-0.05
            (later tries start where they would without it).  Measured on 32 images of each
            embedded set's tuning split (tanhcnn, one step of 4, one restart), identified
            from this start against uniform starts: faces 16 and 18, digits 32 and 31,
            colour 30 and 31, a difference within the run-to-run spread.
        retry_above: a target whose best relative loss is still above this after a try gets
            another (``restarts``), with its labels searched again: with the right labels the
            simulated update is matched to ``tol``, with a wrong one the loss stalls orders of
            magnitude above it (measured: 1.4e-4 for one label of four wrong, where the
            screening's 60 iterations could not tell the two apart).
    """

    labels: str = "infer"
    hypotheses: int = 6
    one_step_hypotheses: int = 4
    screen_iter: int = 60
    screen_seeds: int = 2
    tol: float = 1e-6
    retry_above: float = 1e-5
    beam_width: int = 4
    one_step_ratio: float = 4.0
    bn_weight: float = 0.0
    tv_weight: float = 0.0
    init_image: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.init_image is not None:
            img = np.asarray(self.init_image, dtype=np.float32)
            if img.ndim != 3 or not np.all(np.isfinite(img)):
                raise ValueError(f"init_image must be a finite image [C, H, W]; got shape {img.shape}")
            object.__setattr__(self, "init_image", img)
        if self.labels not in LABEL_SOURCES:
            raise ValueError(f"labels={self.labels!r} is not one of {LABEL_SOURCES}")
        for name in ("hypotheses", "one_step_hypotheses", "screen_iter", "screen_seeds", "beam_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        for name in ("bn_weight", "tv_weight", "retry_above"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if not (np.isfinite(self.one_step_ratio) and self.one_step_ratio >= 1):
            raise ValueError(f"one_step_ratio must be a finite number >= 1; got {self.one_step_ratio!r}")
        if not (np.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a finite number > 0; got {self.tol!r}")


def update_options(cfg: ExperimentConfig, model: nn.Module, labels_given: bool = False,
                   init_image: np.ndarray | None = None) -> UpdateAttackOptions:
    """The multi-step options a run or experiment configures: labels inferred (or given, an
    upper bound), for the ``aware`` attacker on a BatchNorm model the running-statistics
    term (GradInversion-style), the TV prior's weight (config key ``attack-tv``) and the
    public image the first tries start from (``init_image``)."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return UpdateAttackOptions(labels="given" if labels_given else "infer", tv_weight=float(cfg.attack_tv),
                               init_image=init_image,
                               bn_weight=1.0 if cfg.attacker == "aware" and has_bn else 0.0)


@dataclass
class UpdateAttackResult:
    """Per-target outcome of :func:`invert_updates` (T targets; target t has N_t images).

    Attributes:
        images: T arrays ``[N_t, C, H, W]`` in [0, 1] (zeros where the upload was unusable).
        labels: T arrays ``[N_t]`` of the labels the reconstruction was made with (given or
            inferred; -1 where unusable).
        label_source: ``"infer"`` or ``"given"``.
        loss, rel_loss: ``[T]`` lowest matching loss and its ratio to the loss of a zero
            update (``inf`` where unusable).
        failed: ``[T]`` the upload was unusable or no try got below a relative loss of 1.
        iterations, tries: ``[T]`` L-BFGS iterations (screening included) and tries.
        hypotheses: ``[T]`` label hypotheses screened in the first try.
        threat: ``[T]`` ``exact`` or ``simulated``.
        seconds: wall-clock time of the whole call.
    """

    images: list[np.ndarray]
    labels: list[np.ndarray]
    label_source: str
    loss: np.ndarray
    rel_loss: np.ndarray
    failed: np.ndarray
    iterations: np.ndarray
    tries: np.ndarray
    hypotheses: np.ndarray
    threat: list[str]
    seconds: float


class _Group:
    """Targets of one shape: observed data, the simulator, and runner calls."""

    def __init__(self, model: nn.Module, threats: Sequence[ThreatModel], input_shape, num_classes: int,
                 config: AttackConfig, options: UpdateAttackOptions, device: torch.device) -> None:
        self.model, self.config, self.options, self.device = model, config, options, device
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        n, k, b = threats[0].shape
        self.n, self.k, self.b = n, k, b
        self.exact = threats[0].kind == "exact"
        self.lr = threats[0].lr
        self.names = [name for name, _ in model.named_parameters()]
        self.obs = [torch.stack(list(o)).to(device) for o in zip(*(t.pseudo_gradient(model) for t in threats))]
        first = threats[0].global_weights
        self.shared = all(all(np.array_equal(a, c) for a, c in zip(first, t.global_weights)) for t in threats)
        per = [t.parameters(model) for t in threats]
        self.params = ({n_: v.to(device, torch.float32) for n_, v in per[0].items()} if self.shared else
                       {n_: torch.stack([p[n_] for p in per]).to(device, torch.float32) for n_ in self.names})
        self.stats_obs, self.stats_support = self._statistics(threats)
        self.scale = loss_scale(self.obs, config.objective)
        finite = torch.stack([torch.isfinite(o).flatten(1).all(1) for o in self.obs]).all(0)
        self.usable = finite & torch.isfinite(self.scale) & (self.scale > 0)
        self.batches = assumed_batches(n, k, b)
        self.sim = Simulator(model, self.names, self.batches, self.lr, soft=config.method == "dlg")
        self.n_vars = n * int(np.prod(self.input_shape)) + (n * num_classes if config.method == "dlg" else 0)

    def _statistics(self, threats: Sequence[ThreatModel]) -> tuple[list[Tensor], list[Tensor]]:
        """Per BatchNorm buffer ``[T, C]``: ``upload - (1 - m)^K global`` (what the batches
        wrote) and where the upload is non-zero (masked statistics arrive as zeros)."""
        per = [t.statistics(self.model) for t in threats]
        obs, support = [], []
        for j in range(len(per[0])):
            up = torch.stack([p[j][0] for p in per]).to(self.device)
            glob = torch.stack([p[j][1] for p in per]).to(self.device)
            m = per[0][j][2]
            obs.append(up - (1 - m) ** self.k * glob)
            support.append(up != 0)
        return obs, support

    def _subset_params(self, rows: Tensor) -> dict[str, Tensor]:
        return self.params if self.shared else {n_: v[rows] for n_, v in self.params.items()}

    def run(self, rows: Tensor, labels: Tensor, max_iter: int, restarts: int, seed: int,
            start: Tensor | None = None, simulated: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Attack targets ``rows`` (repeats allowed: one row per hypothesis) with ``labels``
        ``[R, N]``; returns ``(variables [R, n_vars], best loss [R], iterations [R], tries [R])``.
        ``simulated``: with the options' ``tol`` (else the config's)."""
        cfg = replace(self.config, max_iter=max_iter, restarts=restarts, seed=seed)
        if simulated:
            cfg = replace(cfg, tol=self.options.tol)
        o = self.options
        if self.exact and self.shared and start is None and o.bn_weight == 0 and o.tv_weight == 0:
            # one image, one step: the single-image problem itself (same loss, its own speed)
            _, _, buffers = params_and_buffers(self.model, self.params, self.device)
            prob = Problem(self.model, self.names, self.params, buffers, [v[rows] for v in self.obs],
                           labels[:, 0].to(self.device), self.input_shape, self.num_classes, cfg, self.device)
            return self._optimise(prob, len(rows), self.scale[rows], lambda z: z)
        prob = MultiStepProblem(self.model, self.names, self._subset_params(rows), self.shared,
                                [v[rows] for v in self.obs], [v[rows] for v in self.stats_obs],
                                labels.to(self.device), self.batches, self.lr, self.input_shape,
                                self.num_classes, cfg, self.device, self.scale[rows],
                                bn_weight=o.bn_weight, tv_weight=o.tv_weight, start=start,
                                stats_support=[v[rows] for v in self.stats_support], simulator=self.sim)
        r = len(rows)
        return self._optimise(prob, r, prob.scale, lambda z: prob.variables(z, torch.arange(r, device=self.device)))

    def _optimise(self, prob, r: int, scale: Tensor, to_variables) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        best_z = torch.zeros(r, self.n_vars, device=self.device)
        best_loss = torch.full((r,), float("inf"), dtype=torch.float64, device=self.device)
        iters = torch.zeros(r, dtype=torch.long)
        tries = torch.zeros(r, dtype=torch.long)
        RUNNERS[prob.cfg.engine](prob, torch.arange(r, device=self.device), scale, best_z, best_loss, iters, tries)
        return to_variables(best_z), best_loss, iters, tries

    def public_start(self, rows: Tensor, seed: int) -> Tensor | None:
        """The first try's start of every row, from the options' public ``init_image``
        (``None`` without one): the image for each of the N dummies, plus the row's seeded
        uniform start scaled to +-0.05, and the runner's own label logits."""
        img = self.options.init_image
        if img is None:
            return None
        if tuple(img.shape) != self.input_shape:
            raise ValueError(f"init_image has shape {tuple(img.shape)}, the images {self.input_shape}")
        from attacks.engines import init_point

        n_img = self.n * int(np.prod(self.input_shape))
        base = torch.as_tensor(img, dtype=torch.float32).flatten().repeat(self.n)
        out = []
        for j in range(len(rows)):
            z = init_point(seed, j, 0, n_img, self.n_vars - n_img, self.config.init)
            z[:n_img] = base + 0.1 * (z[:n_img] - 0.5)
            out.append(z)
        return torch.stack(out).to(self.device)

    def prior(self, z: Tensor, rows: Tensor) -> Tensor:
        """The prior terms (TV) of targets ``rows``' loss at variables ``z`` ``[R, n_vars]``."""
        if self.options.tv_weight == 0:
            return torch.zeros(len(rows), dtype=torch.float64, device=self.device)
        from attacks.multistep import total_variation

        return self.options.tv_weight * self.scale[rows].double() * total_variation(
            self.images_of(z).double(), start_dim=1)

    def images_of(self, z: Tensor) -> Tensor:
        n_img = self.n * int(np.prod(self.input_shape))
        return z[:, :n_img].reshape(-1, self.n, *self.input_shape)


def invert_updates(model: nn.Module, threats: Sequence[ThreatModel], input_shape: Sequence[int],
                   num_classes: int, config: AttackConfig = AttackConfig(),
                   options: UpdateAttackOptions = UpdateAttackOptions(),
                   labels: Sequence[np.ndarray] | None = None,
                   progress: Callable[[str], None] | None = None) -> UpdateAttackResult:
    """Reconstruct the images behind every upload of ``threats`` (see the module docstring).

    ``model`` is the architecture (used functionally, never modified); ``labels`` (with
    ``options.labels == "given"``) are the true labels of every target's images;
    ``progress`` (optional) is called with a line of text at the start of every try.  Raises
    ``ValueError`` for malformed arguments only, never for a numerical failure.
    """
    if not threats:
        raise ValueError("give at least one threat model")
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (C, H, W); got {tuple(input_shape)}")
    if (options.labels == "given") != (labels is not None):
        raise ValueError("labels must be given exactly when options.labels == 'given'")
    if labels is not None and len(labels) != len(threats):
        raise ValueError(f"{len(labels)} label sets for {len(threats)} targets")
    start = time.perf_counter()
    device = resolve_device(config.device)
    T = len(threats)
    out_images: list[np.ndarray | None] = [None] * T
    out_labels: list[np.ndarray | None] = [None] * T
    loss = np.full(T, np.inf)
    rel = np.full(T, np.inf)
    iters = np.zeros(T, dtype=np.int64)
    tries = np.zeros(T, dtype=np.int64)
    hyps = np.zeros(T, dtype=np.int64)
    shapes: dict[tuple[int, int, int], list[int]] = {}
    for t, th in enumerate(threats):
        shapes.setdefault(th.shape, []).append(t)
    for shape, members in shapes.items():
        group = _Group(model, [threats[t] for t in members], input_shape, num_classes, config, options, device)
        given = None if labels is None else [np.asarray(labels[t], dtype=np.int64) for t in members]
        res = _attack_group(group, given, progress)
        for j, t in enumerate(members):
            out_images[t], out_labels[t] = res["images"][j], res["labels"][j]
            loss[t], rel[t], iters[t], tries[t], hyps[t] = (res["loss"][j], res["rel"][j], res["iters"][j],
                                                            res["tries"][j], res["hyps"][j])
    failed = ~(np.isfinite(rel) & (rel < 1.0))
    return UpdateAttackResult(images=out_images, labels=out_labels, label_source=options.labels, loss=loss,
                              rel_loss=rel, failed=failed, iterations=iters, tries=tries, hypotheses=hyps,
                              threat=[th.kind for th in threats], seconds=time.perf_counter() - start)


def _retry_candidates(cands: list[tuple[int, ...]], tried: set, best: tuple[int, ...] | None
                      ) -> list[tuple[int, ...]]:
    """The hypotheses a try screens: those not yet continued to a full try (one that was
    stalled; all of them when none is left) and, when given, the best try's labels again
    from new starts (a bad basin, not a wrong label, may have stopped it; ``-1`` labels: no
    try has a finite loss yet)."""
    fresh = [h for h in cands if h not in tried] or cands
    if best is not None and min(best) >= 0 and best not in fresh:
        fresh = [best] + fresh
    return fresh


def _attack_group(g: _Group, given: list[np.ndarray] | None, progress=None) -> dict:
    """Labels, screening rounds and tries for the targets of one shape."""

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    cfg, opt, dev = g.config, g.options, g.device
    T = len(g.usable)
    usable = torch.nonzero(g.usable).flatten()
    best_x = torch.zeros(T, g.n_vars, device=dev)
    best_loss = torch.full((T,), float("inf"), dtype=torch.float64, device=dev)
    best_lab = torch.full((T, g.n), -1, dtype=torch.long)
    iters = torch.zeros(T, dtype=torch.long)
    tries = torch.zeros(T, dtype=torch.long)
    n_hyps = torch.zeros(T, dtype=torch.long)

    def keep(rows: Tensor, x: Tensor, lo: Tensor, lab: Tensor) -> None:
        for j, t in enumerate(rows.tolist()):
            if bool(torch.isfinite(lo[j])) and bool(lo[j] < best_loss[t]):
                best_x[t], best_loss[t], best_lab[t] = x[j], lo[j], lab[j].cpu()

    if usable.numel() and g.exact:
        # one image, one step: iDLG with the runner's own restarts, as invert_gradients
        lab = (torch.stack([torch.as_tensor(given[int(t)][:1]) for t in usable]) if given is not None
               else observed_labels(g.model, g.names, g.obs)[usable].reshape(-1, 1).cpu())
        say(f"{len(usable)} single-image target(s), up to {cfg.restarts + 1} tries of {cfg.max_iter} iterations")
        x, lo, it, tr = g.run(usable, lab, cfg.max_iter, cfg.restarts, cfg.seed,
                              start=g.public_start(usable, cfg.seed), simulated=False)
        keep(usable, x, lo, lab)
        iters[usable.cpu()] += it
        tries[usable.cpu()] += tr
        n_hyps[usable.cpu()] = 1
    elif usable.numel():
        search = searcher_for(g, given)
        screen_iter = min(opt.screen_iter, cfg.max_iter)  # the screening is part of the try's budget
        pending = usable
        tried: dict[int, set] = {}
        for rnd in range(cfg.restarts + 1):
            if pending.numel() == 0:
                break
            say(f"try {rnd + 1} of {cfg.restarts + 1}: {len(pending)} target(s) of {g.n} images, "
                f"{g.k} step(s) of {g.b}")
            recon = None if rnd == 0 else g.images_of(best_x[pending]).clamp(0, 1)
            cands = [hypotheses_for(g, search, t, given, None if recon is None else recon[j])
                     for j, t in enumerate(pending.tolist())]
            cands = [_retry_candidates(c, tried.get(t, set()),
                                       tuple(best_lab[t].tolist()) if rnd > 0 and g.k > 1 else None)
                     for t, c in zip(pending.tolist(), cands)]
            if rnd == 0:
                n_hyps[pending.cpu()] = torch.tensor([len(c) for c in cands])
            cands = [c * opt.screen_seeds for c in cands]
            rows = torch.tensor([t for t, c in zip(pending.tolist(), cands) for _ in c], device=dev)
            lab = torch.tensor([h for c in cands for h in c], dtype=torch.long)
            seed = cfg.seed if rnd == 0 else int(np.random.SeedSequence([cfg.seed & 0xFFFFFFFF, rnd])
                                                  .generate_state(1)[0])
            budget, start = cfg.max_iter, (g.public_start(rows, seed) if rnd == 0 else None)
            if len(rows) > len(pending):
                # screening: every hypothesis briefly, in one call; each target continues its best
                x, lo, it, _ = g.run(rows, lab, screen_iter, 0, seed, start=start)
                iters.index_add_(0, rows.cpu(), it)
                rel = (lo / g.scale[rows]).cpu()
                rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, float("inf")))
                pick = torch.tensor([int(torch.nonzero(rows.cpu() == t).flatten()[
                    torch.argmin(rel[rows.cpu() == t])]) for t in pending.tolist()])
                keep(rows[pick], x[pick], lo[pick], lab[pick])
                rows, lab, start = rows[pick], lab[pick], x[pick]
                budget = max(cfg.max_iter - screen_iter, 1)
            x, lo, it, _ = g.run(rows, lab, budget, 0, seed, start=start)
            keep(rows, x, lo, lab)
            for t, h in zip(rows.tolist(), lab.tolist()):
                tried.setdefault(t, set()).add(tuple(h))
            iters.index_add_(0, rows.cpu(), it)
            tries[rows.cpu()] += 1
            # whether a try is good enough is read off the matching alone (a prior keeps the loss up)
            matching = best_loss[pending] - g.prior(best_x[pending], pending)
            pending = pending[matching / g.scale[pending] > min(cfg.restart_above, opt.retry_above)]
    x_img = g.images_of(best_x).clamp(0, 1).detach().cpu().numpy()
    rel = (best_loss / g.scale).cpu().numpy()
    images = [x_img[t] if bool(g.usable[t]) else np.zeros_like(x_img[t]) for t in range(T)]
    return {"images": images, "labels": [best_lab[t].numpy() for t in range(T)],
            "loss": best_loss.cpu().numpy(), "rel": np.where(g.usable.cpu().numpy(), rel, np.inf),
            "iters": iters.numpy(), "tries": tries.numpy(), "hyps": n_hyps.numpy()}
