"""The threat model: what an honest-but-curious server knows, and how it attacks.

The server sees the global model it sent (architecture and weights), each client's
upload, and the public training facts (learning rate, local steps, batch size, and the
number of examples the client reports with its upload).  One upload is one target,
described by a :class:`ThreatModel`.  From it the server recovers the client's
(defended) update in gradient units, the *pseudo-gradient*

    g = (global - upload) / lr          (trainable parameters only)

which is exactly the gradient of the client's loss when the client took one SGD step on
one image (``local-steps = 1``, ``batch-size = 1``: threat model ``exact``), the batch's
mean gradient for one step of a batch, and in general the sum of the K steps' batch
gradients, each taken at the weights the client had reached.  The multi-step attack
(:mod:`attacks.multistep`) simulates those K steps on dummy images (threat model
``simulated``).  For BatchNorm models the upload also carries the client's running
statistics, which an aware attacker matches.

The attacker's objective: ``naive`` is the papers' L2 gradient matching; ``aware`` knows
the defense and picks the objective that fits it (the defense registry's
``aware_objective``, :data:`fl_defense.defenses.DEFENSES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from attacks.inversion import AttackConfig
from attacks.objectives import OBJECTIVES
from fl_defense.config import ExperimentConfig
from fl_defense.defenses import get_defense


def defense_seen(cfg: ExperimentConfig) -> str:
    """The name of what the uploads went through, as the server knows it: the configured
    defense, or ``clipping`` when only Flower's client-side DP wrapper clips them (the
    server itself sends the clipping norm)."""
    if cfg.defense.name == "none" and cfg.dp_strategy == "client-side-fixed-clipping":
        return "clipping"
    return cfg.defense.name


def objective_for(attacker: str, defense_name: str) -> str:
    """The gradient-matching objective an attacker uses against a defense."""
    if attacker == "naive":
        return "l2"
    if attacker == "aware":
        objective = get_defense(defense_name).aware_objective
        if objective not in OBJECTIVES:
            raise ValueError(f"defense {defense_name!r} names the aware objective {objective!r}, which is not "
                             f"one of {', '.join(OBJECTIVES)}")
        return objective
    raise ValueError(f"unknown attacker {attacker!r}; choose naive or aware")


def attack_config(cfg: ExperimentConfig, device: str, batch_size: int = 64) -> AttackConfig:
    """The engine's settings for the attack a run or an experiment configures: method,
    objective (from the attacker and the defense's name), iteration budget, restarts, seed."""
    return AttackConfig(method=cfg.attack_method, objective=objective_for(cfg.attacker, defense_seen(cfg)),
                        max_iter=cfg.attack_max_iter, restarts=cfg.attack_restarts, patience=cfg.attack_patience,
                        seed=cfg.seed,
                        batch_size=batch_size, device=device)


def threat_model(local_steps: int, batch_size: int, num_examples: int | None = None) -> str:
    """``exact`` when the upload is one single-image gradient step (one step of one
    image), else ``simulated`` (the attack simulates the client's steps).  Without
    ``num_examples`` the batch size stands for it."""
    n = batch_size if num_examples is None else num_examples
    return "exact" if local_steps == 1 and min(batch_size, n) == 1 else "simulated"


@dataclass(frozen=True)
class ThreatModel:
    """What an honest-but-curious server knows about ONE client upload (one target).

    Known (the server has them): ``global_weights`` (the weights it sent, ``state_dict``
    order, as Flower carries them), ``upload`` (what the client sent back), the
    architecture (the ``nn.Module`` given to the attack beside this object), and the public
    training facts: ``lr``, ``local_steps`` K, ``batch_size`` B, ``num_examples`` N (the
    number of distinct images the client trained on, which Flower sends in plain text as
    ``FitRes.num_examples``), and ``defense``, the defense's name, which the protocol
    publishes (only the ``aware`` attacker uses it, to pick its objective).

    Unknown (never here): the client's images, labels, batch order and seeds.  The
    simulation assumes the batch order of :func:`attacks.multistep.assumed_batches` (see
    there why this is without loss of generality for one epoch and for full-batch steps,
    and what it costs otherwise).  The number of examples is trusted: a client that
    misreports it makes the attack simulate the wrong batches.
    """

    global_weights: tuple[np.ndarray, ...]
    upload: tuple[np.ndarray, ...]
    lr: float
    local_steps: int
    batch_size: int
    num_examples: int
    defense: str = "none"

    def __post_init__(self) -> None:
        if len(self.global_weights) != len(self.upload):
            raise ValueError(f"global weights have {len(self.global_weights)} arrays, the upload "
                             f"{len(self.upload)}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0; got {self.lr!r}")
        for name in ("local_steps", "batch_size", "num_examples"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, global_weights: Sequence[np.ndarray],
                    upload: Sequence[np.ndarray], num_examples: int) -> "ThreatModel":
        """The threat model of one upload in a run or experiment configured by ``cfg``:
        only the public facts of ``cfg`` are read (lr, local steps, batch size, the
        defense's name)."""
        return cls(tuple(np.asarray(w) for w in global_weights), tuple(np.asarray(w) for w in upload),
                   float(cfg.lr), int(cfg.local_steps), int(cfg.batch_size), int(num_examples),
                   cfg.defense.name)

    @property
    def kind(self) -> str:
        """``exact`` (one step of one image) or ``simulated``."""
        return threat_model(self.local_steps, self.batch_size, self.num_examples)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, K, B)``: targets with the same shape share one simulated schedule."""
        return int(self.num_examples), int(self.local_steps), int(self.batch_size)

    def pseudo_gradient(self, model: nn.Module) -> list[torch.Tensor]:
        """``(global - upload) / lr`` per trainable parameter, in ``named_parameters`` order."""
        return observed_gradient(model, self.global_weights, self.upload, self.lr)

    def parameters(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The global weights of the trainable parameters, ``{name: tensor}``."""
        return parameters_from_state(model, self.global_weights)

    def statistics(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        """For every BatchNorm running statistic (mean then variance, layer by layer):
        ``(uploaded value, global value, momentum)``; empty without BatchNorm."""
        keys = list(model.state_dict().keys())
        index = {k: i for i, k in enumerate(keys)}
        out = []
        for name, m in model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                prefix = f"{name}." if name else ""
                for key in ("running_mean", "running_var"):
                    i = index[prefix + key]
                    out.append((torch.as_tensor(np.asarray(self.upload[i], dtype=np.float32)),
                                torch.as_tensor(np.asarray(self.global_weights[i], dtype=np.float32)),
                                float(m.momentum if m.momentum is not None else float("nan"))))
        return out


def observed_gradient(model: nn.Module, global_w: Sequence[np.ndarray], upload_w: Sequence[np.ndarray],
                      lr: float) -> list[torch.Tensor]:
    """``(global - upload) / lr`` for every trainable parameter, in ``named_parameters`` order.

    ``global_w`` and ``upload_w`` are in ``state_dict`` order (what Flower carries).
    """
    keys = list(model.state_dict().keys())
    if len(keys) != len(global_w) or len(keys) != len(upload_w):
        raise ValueError(f"expected {len(keys)} arrays, got {len(global_w)} and {len(upload_w)}")
    index = {k: i for i, k in enumerate(keys)}
    out = []
    for name, _ in model.named_parameters():
        i = index[name]
        g = np.asarray(global_w[i], dtype=np.float64)
        u = np.asarray(upload_w[i], dtype=np.float64)
        out.append(torch.as_tensor((g - u) / lr, dtype=torch.float32))
    return out


def parameters_from_state(model: nn.Module, weights: Sequence[np.ndarray]) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of the trainable parameters, from ``state_dict``-ordered arrays."""
    keys = list(model.state_dict().keys())
    index = {k: i for i, k in enumerate(keys)}
    return {name: torch.as_tensor(np.asarray(weights[index[name]])) for name, _ in model.named_parameters()}
