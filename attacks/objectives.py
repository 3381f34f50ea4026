"""Gradient-matching objectives: how far a dummy gradient is from the observed one."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

OBJECTIVES = ("l2", "l2-support", "cosine")
EPS = 1e-12


def matching_loss(dummy: Sequence[Tensor], observed: Sequence[Tensor], objective: str) -> Tensor:
    """Gradient-matching loss per target, ``[T]``, between stacked gradients ``[T, ...]``.

    * ``"l2"``: ``sum_p ||d_p - o_p||^2`` (Zhu et al., 2019; Zhao et al., 2020);
    * ``"l2-support"``: ``sum_p ||1[o_p != 0] * (d_p - o_p)||^2``: only the coordinates where
      the observed gradient is non-zero count, so zeros written by masking or pruning do not
      pull the dummy gradient to zero;
    * ``"cosine"``: ``1 - <d, o> / (||d|| ||o||)`` with all parameters concatenated
      (Geiping et al., 2020), invariant to a positive rescaling of ``o`` (clipping).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not one of {OBJECTIVES}")
    if len(dummy) != len(observed):
        raise ValueError(f"dummy has {len(dummy)} tensors but observed has {len(observed)}")
    if objective == "cosine":
        dot = sum((d * o).flatten(1).sum(1) for d, o in zip(dummy, observed))
        dd = sum((d * d).flatten(1).sum(1) for d in dummy)
        oo = sum((o * o).flatten(1).sum(1) for o in observed)
        return 1.0 - dot / (dd.clamp_min(EPS).sqrt() * oo.clamp_min(EPS).sqrt())
    total = 0.0
    for d, o in zip(dummy, observed):
        diff = d - o
        if objective == "l2-support":
            diff = diff * (o != 0)
        total = total + (diff * diff).flatten(1).sum(1)
    return total


def loss_scale(observed: Sequence[Tensor], objective: str) -> Tensor:
    """Per-target normaliser of :func:`matching_loss`: ``||o||^2`` for the L2 objectives
    (the loss of a zero dummy gradient), 1 for cosine.  ``loss / loss_scale`` is the
    relative loss used for early stopping, restarts and ``failed``."""
    if objective == "cosine":
        return torch.ones(observed[0].shape[0], dtype=torch.float64, device=observed[0].device)
    return sum((o.double() ** 2).flatten(1).sum(1) for o in observed)
