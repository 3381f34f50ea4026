"""The settings of a gradient-inversion attack (:class:`AttackConfig`) and its outcome
(:class:`AttackResult`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attacks.objectives import OBJECTIVES
from fl_defense.config import ATTACK_METHODS

METHODS = ATTACK_METHODS
ENGINES = ("batched", "loop", "joint")
INITS = ("randn", "rand")
GRAD_IMPLS = ("auto", "vmap")


def resolve_device(name: str) -> torch.device:
    """``"auto"``: ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``; else ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True)
class AttackConfig:
    """Settings of a gradient-inversion attack.

    Attributes:
        method: ``"idlg"`` (label inferred from the gradient, image optimised) or ``"dlg"``
            (image and label logits optimised jointly).
        objective: ``"l2"``, ``"l2-support"`` or ``"cosine"`` (see :func:`matching_loss`).
        max_iter: most L-BFGS iterations per try (one gradient evaluation each).
        history_size: L-BFGS memory (100, as the papers' ``torch.optim.LBFGS``).
        lr: L-BFGS step size (1, as the papers; no line search).
        restarts: extra tries from a fresh random init for a target whose best relative loss
            is still above ``restart_above`` when a try ends.
        tol: early stop a target once its relative loss (:func:`loss_scale`) is below it.
        restart_above: a try whose relative loss is still above this level is in a bad
            basin: it ends when the loss has not halved for ``patience`` iterations, and the
            target is restarted (if tries are left).  Below it a try is converging and is
            never restarted: it ends at ``tol``, after ``max_iter`` iterations, or when the
            loss has not improved by 10% for ``patience`` iterations (a floor set by a
            defense or by float precision).
        patience: see ``restart_above``.
        diverge_factor: a try whose loss exceeds this multiple of its initial loss, or is
            non-finite, is abandoned (and restarted if tries are left).
        init: dummy image init, ``"rand"`` (uniform [0, 1], default) or ``"randn"``
            (standard normal, the papers).  Measured on 16 MNIST digits, 300 iterations, no
            restart: SSIM >= 0.9 for 15/16 from ``"rand"``, 13/16 from ``"randn"``; on 8
            colour crops the relative loss after 300 iterations is ~1e-5 vs ~1e-3.  Label
            logits (DLG) are always standard normal.
        engine: ``"batched"``, ``"loop"`` or ``"joint"`` (see the module docstring).
        batch_size: most targets the batched engine optimises at once; when one finishes, a
            waiting target takes its place (bounds memory: ``2 * history_size`` vectors of
            the image size per target).
        seed: the init of target ``t`` in try ``k`` is drawn from a generator seeded with
            ``(seed, t, k)``, so every engine starts target t from the same point.
        device: torch device for the attack: ``"auto"`` (default: CUDA when torch sees a
            GPU, else the CPU; :func:`resolve_device`, chosen once per attack), ``"cpu"``,
            ``"cuda"``, ``"cuda:1"``...  Every engine runs on it; nothing needs a GPU.
        grad_impl: how the batched and joint engines compute the matching loss and its
            gradient: ``"auto"`` (default) uses the hand-written double back-propagation of
            :func:`attacks.layerwise.fused_loss_grad_fn` when the model is a plain chain of
            convolutions, activations and linear layers (the LeNet), else
            ``torch.func.vmap`` per-example gradients and autograd; ``"vmap"`` always the
            latter.  Both give the same values (to float rounding).  The loop engine always
            uses plain autograd, the papers' way.
    """

    method: str = "idlg"
    objective: str = "l2"
    max_iter: int = 2000
    history_size: int = 100
    lr: float = 1.0
    restarts: int = 2
    tol: float = 1e-8
    restart_above: float = 1e-3
    patience: int = 300
    diverge_factor: float = 1e4
    init: str = "rand"
    engine: str = "batched"
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    grad_impl: str = "auto"

    def __post_init__(self) -> None:
        for field, allowed in (("method", METHODS), ("objective", OBJECTIVES),
                               ("engine", ENGINES), ("init", INITS),
                               ("grad_impl", GRAD_IMPLS)):
            value = getattr(self, field)
            if value not in allowed:
                raise ValueError(f"{field}={value!r} is not one of {', '.join(allowed)}")
        for field in ("max_iter", "history_size", "patience", "batch_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive int; got {value!r}")
        if not isinstance(self.restarts, int) or self.restarts < 0:
            raise ValueError(f"restarts must be a non-negative int; got {self.restarts!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ValueError(f"device={self.device!r} is not 'auto' or a torch device") from exc
        for field in ("lr", "tol", "restart_above", "diverge_factor"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{field} must be a finite positive number; got {value!r}")


@dataclass
class AttackResult:
    """Per-target outcome of :func:`invert_gradients` (T targets).

    Attributes:
        images: ``[T, C, H, W]`` float32 reconstructions clamped to [0, 1] (the best try;
            zeros for a target whose observed gradient was unusable).
        labels: ``[T]`` int64 predicted labels (-1 where the observed gradient was unusable).
        loss: ``[T]`` lowest matching loss (the objective's value) reached over all tries;
            ``images`` and ``labels`` are taken at that point.
        rel_loss: ``[T]`` the loss divided by :func:`loss_scale` (``inf`` when unusable).
        failed: ``[T]`` bool: the observed gradient was non-finite or zero, or no try reached
            a finite relative loss below 1 (no closer than a zero gradient).
        iterations: ``[T]`` L-BFGS iterations spent on the target, all tries together.
        tries: ``[T]`` tries used (1 + restarts used).
        seconds: wall-clock time of the whole attack.
    """

    images: np.ndarray
    labels: np.ndarray
    loss: np.ndarray
    rel_loss: np.ndarray
    failed: np.ndarray
    iterations: np.ndarray
    tries: np.ndarray
    seconds: float
