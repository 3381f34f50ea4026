"""Gradient-matching objectives: how far a dummy gradient is from the observed one.

The registry :data:`OBJECTIVES` holds every objective an attacker can use; a defense's
registry entry names the objective of an attacker who knows it
(:attr:`fl_defense.defenses.Defense.aware_objective`), and the attack settings validate
their objective against this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from fl_defense.registry import Registry

EPS = 1e-12


def _l2(dummy: Sequence[Tensor], observed: Sequence[Tensor], support: bool) -> Tensor:
    total = 0.0
    for d, o in zip(dummy, observed):
        diff = d - o
        if support:
            diff = diff * (o != 0)
        total = total + (diff * diff).flatten(1).sum(1)
    return total


def _cosine(dummy: Sequence[Tensor], observed: Sequence[Tensor]) -> Tensor:
    dot = sum((d * o).flatten(1).sum(1) for d, o in zip(dummy, observed))
    dd = sum((d * d).flatten(1).sum(1) for d in dummy)
    oo = sum((o * o).flatten(1).sum(1) for o in observed)
    return 1.0 - dot / (dd.clamp_min(EPS).sqrt() * oo.clamp_min(EPS).sqrt())


def _squared_norm(observed: Sequence[Tensor]) -> Tensor:
    return sum((o.double() ** 2).flatten(1).sum(1) for o in observed)


def _ones(observed: Sequence[Tensor]) -> Tensor:
    return torch.ones(observed[0].shape[0], dtype=torch.float64, device=observed[0].device)


@dataclass(frozen=True)
class Objective:
    """A registry entry.

    Attributes
    ----------
    name : the objective's name.
    loss : ``loss(dummy, observed) -> [T]`` between stacked gradients ``[T, ...]``.
    scale : ``scale(observed) -> [T]``, the loss of a zero dummy gradient (the relative
        loss ``loss / scale`` decides early stops, restarts and ``failed``).
    summary : one line for help texts.
    squared_distance : the loss is a (masked) squared distance, whose adjoint the
        hand-written double back-propagation computes in closed form.
    support : only the coordinates where the observed gradient is non-zero count (also for
        the BatchNorm statistics term).
    """

    name: str
    loss: Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
    scale: Callable[[Sequence[Tensor]], Tensor]
    summary: str
    squared_distance: bool = False
    support: bool = False


OBJECTIVES: Registry[Objective] = Registry("objective", Objective, (
    Objective("l2", lambda d, o: _l2(d, o, False), _squared_norm,
              "sum_p ||d_p - o_p||^2 (Zhu et al., 2019; Zhao et al., 2020)", squared_distance=True),
    Objective("l2-support", lambda d, o: _l2(d, o, True), _squared_norm,
              "sum_p ||1[o_p != 0] (d_p - o_p)||^2: zeros written by masking or pruning do not pull the dummy "
              "gradient to zero", squared_distance=True, support=True),
    Objective("cosine", _cosine, _ones,
              "1 - <d, o> / (||d|| ||o||) over all parameters (Geiping et al., 2020): invariant to a positive "
              "rescaling of o (clipping)"),
))
"""name -> :class:`Objective`."""


def matching_loss(dummy: Sequence[Tensor], observed: Sequence[Tensor], objective: str) -> Tensor:
    """Gradient-matching loss per target, ``[T]``, between stacked gradients ``[T, ...]``
    (see :data:`OBJECTIVES`); ``ValueError`` naming an unknown objective."""
    entry = OBJECTIVES.get(objective)
    if len(dummy) != len(observed):
        raise ValueError(f"dummy has {len(dummy)} tensors but observed has {len(observed)}")
    return entry.loss(dummy, observed)


def loss_scale(observed: Sequence[Tensor], objective: str) -> Tensor:
    """Per-target normaliser of :func:`matching_loss`: ``||o||^2`` for the squared distances
    (the loss of a zero dummy gradient), 1 for cosine.  ``loss / loss_scale`` is the
    relative loss used for early stopping, restarts and ``failed``."""
    return OBJECTIVES.get(objective).scale(observed)
