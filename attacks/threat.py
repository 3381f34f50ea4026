"""The threat model: what an honest-but-curious server knows, and how it attacks.

The server sees the global model it sent (architecture and weights), each client's
upload, and the public training facts (learning rate, local steps, batch size).  From
them it recovers the client's (defended) update as a gradient:

    g = (global - upload) / lr          (trainable parameters only)

which is *exactly* the gradient of the client's loss when the client took one SGD step
on one image (``local-steps = 1``, ``batch-size = 1``: threat model ``exact``).  With
more images or steps the same quantity is the average of several gradients, and the
attack still runs, as a real server would (threat model ``approximate``).

The attacker's objective: ``naive`` is the papers' L2 gradient matching; ``aware`` knows
the defense and picks the objective that fits it (:data:`AWARE_OBJECTIVE`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from attacks.inversion import AttackConfig
from fl_defense.config import ExperimentConfig

# defense name -> objective of an attacker who knows the defense
AWARE_OBJECTIVE = {
    "none": "l2",
    "masking": "l2-support",       # masked coordinates arrive as exact zeros: leave them out
    "masking-bn": "l2-support",
    "pruning": "l2-support",       # pruned coordinates too
    "clipping": "cosine",          # clipping rescales the gradient: match its direction
    "noising": "l2",               # zero-mean noise: L2 matching is already the ML estimate
    "noising-laplace": "l2",
    "dp-gaussian": "cosine",       # clipped (unknown scale) plus isotropic noise: match the direction
}


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
        try:
            return AWARE_OBJECTIVE[defense_name]
        except KeyError:
            raise ValueError(f"no aware objective for defense {defense_name!r}") from None
    raise ValueError(f"unknown attacker {attacker!r}; choose naive or aware")


def attack_config(cfg: ExperimentConfig, device: str, batch_size: int = 64) -> AttackConfig:
    """The engine's settings for the attack a run or an experiment configures: method,
    objective (from the attacker and the defense's name), iteration budget, restarts, seed."""
    return AttackConfig(method=cfg.attack_method, objective=objective_for(cfg.attacker, defense_seen(cfg)),
                        max_iter=cfg.attack_max_iter, restarts=cfg.attack_restarts, seed=cfg.seed,
                        batch_size=batch_size, device=device)


def threat_model(local_steps: int, batch_size: int) -> str:
    """``exact`` when the upload is one single-image gradient step, else ``approximate``."""
    return "exact" if local_steps == 1 and batch_size == 1 else "approximate"


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
