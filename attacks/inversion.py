"""Gradient inversion (DLG / iDLG), vectorised over many independent targets.

Threat model (Zhu, Liu & Han, 2019, "Deep Leakage from Gradients", NeurIPS; Zhao, Mopuri &
Bilen, 2020, "iDLG: Improved Deep Leakage from Gradients", arXiv:2001.02610): an honest-but-
curious server knows the model and its parameters and observes the gradient of the
cross-entropy loss that a client computed on ONE private image.  It looks for a dummy image
(and, for DLG, a dummy soft label) whose gradient matches the observed one:

    x* = argmin_x  D(grad_theta CE(f_theta(x), y), g_obs)

* **iDLG** first reads the label off the observed gradient (:func:`infer_label_idlg`) and then
  optimises the image only; **DLG** optimises the image and label logits jointly.
* Objectives ``D`` (:func:`matching_loss`): ``"l2"``, the papers' squared Euclidean distance;
  ``"l2-support"``, the same restricted to the coordinates where the observed gradient is
  non-zero (an attacker's answer to masking/pruning, which zero coordinates); ``"cosine"``,
  ``1 - cos(g, g_obs)`` over all parameters concatenated (Geiping, Bauermeister, Droege &
  Moeller, 2020, "Inverting Gradients", NeurIPS), scale invariant (against clipping).
* Optimiser: L-BFGS with step size 1, history 100 and no line search, like the papers'
  ``torch.optim.LBFGS(lr=1)``.  ``max_iter`` counts L-BFGS iterations (one gradient
  evaluation each) per try; the papers call ``step()`` 300 times with torch's 20 inner
  iterations, i.e. up to 6000.

The attack follows the "plain payload" principle of breaching (J. Geiping,
github.com/JonasGeiping/breaching): it takes a model used functionally
(:func:`torch.func.functional_call` with the given parameter values), the observed
gradients, the input shape and the number of classes -- never the true images, and no
Flower objects.

Engines (``AttackConfig.engine``):

* ``"batched"`` (default): all T targets in one dummy batch ``[T, C, H, W]``; the matching
  loss and its gradient with respect to the dummy images by the hand-written double
  back-propagation of :func:`attacks.layerwise.fused_loss_grad_fn` when the model is a plain
  chain of convolutions, activations and linear layers (the LeNet), else per-target
  gradients by ``torch.func.vmap(torch.func.grad(...))`` back-propagated by autograd
  (``AttackConfig.grad_impl``); one L-BFGS per target run
  in lockstep by a batched L-BFGS (:class:`LBFGSMemory`, compact form of Byrd, Nocedal &
  Schnabel, 1994) with per-target history, step, early stopping, divergence check and
  restarts.  Finished targets are dropped from the batch.
* ``"loop"``: one target at a time with ``torch.optim.LBFGS`` and plain autograd (the
  papers' way), same iteration budget, stopping rule and restarts.
* ``"joint"``: one ``torch.optim.LBFGS`` over the concatenation of all targets (summed
  loss).  Kept for comparison only: the targets share one step and one curvature history,
  and none can stop early, so every target runs as many iterations as the slowest one
  (``benchmarks/bench_attack.py`` compares the engines).

Images are optimised unconstrained (no box constraint, as in the papers) from a uniform
[0, 1] init (the papers draw a Gaussian; see :class:`AttackConfig`) and clamped to [0, 1] at the end.  An attack never raises on a
numerical failure: a target whose observed gradient is non-finite or all zero, or whose
optimisation never reaches a finite relative loss below 1, is marked ``failed``.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from attacks.engines import RUNNERS, Problem
from attacks.gradients import last_linear_weight_index, params_and_buffers
from attacks.labels import observed_labels
from attacks.objectives import loss_scale
from attacks.settings import ENGINES, METHODS, AttackConfig, AttackResult, resolve_device

__all__ = ["METHODS", "ENGINES", "AttackConfig", "AttackResult", "invert_gradients",
           "invert_gradients_loop"]


def _normalise_observed(observed: object, names: list[str], shapes: list[torch.Size],
                        device: torch.device) -> list[Tensor]:
    """Per-target lists or stacked per-parameter tensors -> stacked float32 ``[T, ...]``."""
    if isinstance(observed, (list, tuple)) and len(observed) > 0 \
            and isinstance(observed[0], (list, tuple)):
        per_target = observed
        for t, grads in enumerate(per_target):
            if len(grads) != len(names):
                raise ValueError(f"observed[{t}] has {len(grads)} tensors; the model has "
                                 f"{len(names)} parameters")
        stacked = [torch.stack([torch.as_tensor(g[i]).reshape(shapes[i]) for g in per_target])
                   for i in range(len(names))]
    elif isinstance(observed, (list, tuple)) and len(observed) == len(names):
        stacked = [torch.as_tensor(o) for o in observed]
    else:
        raise ValueError("observed must be a list of per-target gradient lists or a list of "
                         f"{len(names)} stacked tensors [T, ...]; got {type(observed).__name__}"
                         f" of length {len(observed) if hasattr(observed, '__len__') else '?'}")
    t = stacked[0].shape[0]
    for name, shape, o in zip(names, shapes, stacked):
        if tuple(o.shape) != (t, *shape):
            raise ValueError(f"observed gradient of {name} has shape {tuple(o.shape)}; "
                             f"expected {(t, *shape)}")
    if t == 0:
        raise ValueError("observed holds no targets")
    return [o.detach().to(device=device, dtype=torch.float32) for o in stacked]



def _usable(observed: list[Tensor], scale: Tensor) -> Tensor:
    finite = torch.stack([torch.isfinite(o).flatten(1).all(1) for o in observed]).all(0)
    return finite & torch.isfinite(scale) & (scale > 0)


def invert_gradients(model: nn.Module, observed: object, input_shape: Sequence[int],
                     num_classes: int, config: AttackConfig = AttackConfig(),
                     params: dict[str, Tensor] | None = None) -> AttackResult:
    """Reconstruct T private images from their observed single-image gradients.

    Args:
        model: the network (its parameters are used unless ``params`` is given); it is used
            functionally and not modified.  iDLG needs an ``nn.Linear`` last layer.
        observed: either a list of T per-target lists of tensors in ``model.named_parameters()``
            order, or a list of per-parameter stacked tensors ``[T, *p.shape]`` (what
            :func:`single_image_gradients` returns).
        input_shape: ``(C, H, W)`` of one image.
        num_classes: number of classes of the model output.
        config: :class:`AttackConfig`.
        params: optional parameter values ``{name: tensor}`` at which the gradients were taken.
    Returns:
        :class:`AttackResult`.  Raises ``ValueError`` only for malformed arguments, never for a
        numerical failure of the optimisation.
    """
    if len(tuple(input_shape)) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W); got {tuple(input_shape)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
    start = time.perf_counter()
    device = resolve_device(config.device)
    names, p, b = params_and_buffers(model, params, device)
    shapes = [p[n].shape for n in names]
    obs = _normalise_observed(observed, names, shapes, device)
    T = obs[0].shape[0]
    scale = loss_scale(obs, config.objective)
    usable = _usable(obs, scale)

    labels = torch.full((T,), -1, dtype=torch.long, device=device)
    if config.method == "idlg":
        w = obs[last_linear_weight_index(model)]
        if w.shape[1] != num_classes:
            raise ValueError(f"the last linear layer has {w.shape[1]} outputs but "
                             f"num_classes={num_classes}")
        labels = torch.where(usable, observed_labels(model, names, obs), labels)

    prob = Problem(model, names, p, b, obs, labels.clamp_min(0), tuple(input_shape),
                    num_classes, config, device)
    n_var = prob.n_img + prob.n_lab
    best_z = torch.zeros(T, n_var, device=device)
    best_loss = torch.full((T,), float("inf"), dtype=torch.float64, device=device)
    iters = torch.zeros(T, dtype=torch.long)
    tries = torch.zeros(T, dtype=torch.long)

    todo = torch.nonzero(usable).flatten()
    if todo.numel() > 0:
        RUNNERS[config.engine](prob, todo, scale, best_z, best_loss, iters, tries)

    x, y = prob.split(best_z)
    images = x.clamp(0, 1).detach().cpu().float().numpy()
    if config.method == "dlg":
        labels = torch.where(usable, y.argmax(1), labels)
    rel = (best_loss / scale).cpu()
    rel = torch.where(usable.cpu() & torch.isfinite(rel), rel, torch.full_like(rel, float("inf")))
    failed = ~usable.cpu() | ~(rel < 1.0)
    return AttackResult(images=images, labels=labels.cpu().numpy().astype(np.int64),
                        loss=best_loss.cpu().numpy(), rel_loss=rel.numpy(),
                        failed=failed.numpy(), iterations=iters.numpy(), tries=tries.numpy(),
                        seconds=time.perf_counter() - start)


def invert_gradients_loop(model: nn.Module, observed: object, input_shape: Sequence[int],
                          num_classes: int, config: AttackConfig = AttackConfig(),
                          params: dict[str, Tensor] | None = None) -> AttackResult:
    """:func:`invert_gradients` with ``engine="loop"``: one ``torch.optim.LBFGS`` per target."""
    return invert_gradients(model, observed, input_shape, num_classes,
                            replace(config, engine="loop"), params)
