"""Single-image gradient attacks on a fresh DLG LeNet: the engine of ``run_sim.py attack``
and of the threshold sweep (the papers' setting: one image, one step).

Each target image plays a client that takes one SGD step (learning rate ``lr``) on that
image alone: its update is ``-lr * g`` with ``g`` the true single-image gradient.  The
client's defense is applied to that update -- so a defense strength here means exactly
what it means in a federated run with the same ``lr`` -- and the server inverts
``-(defended update) / lr``.  The attack never sees the images; :mod:`attacks.scoring`
compares its output with them afterwards.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from attacks.gradients import single_image_gradients
from attacks.inversion import invert_gradients
from attacks.scoring import Scores, score_single
from attacks.threat import attack_config
from fl_defense.config import ExperimentConfig
from fl_defense.defenses import DefenseSpec, apply_defense, defense_rng
from fl_defense.models import LeNet, state_kinds


def fresh_lenet(in_channels: int, image_size: int, num_classes: int, seed: int) -> torch.nn.Module:
    """The DLG LeNet with the DLG init, drawn from ``seed``."""
    torch.manual_seed(seed)
    return LeNet(in_channels, image_size, num_classes, dlg_init=True)


def defended_gradients(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                       defenses: Sequence[DefenseSpec], lr: float, seed: int, device: str = "cpu",
                       client_ids: Sequence[int] | None = None) -> list[list[torch.Tensor]]:
    """Per target t, what the server recovers: ``-(defenses[t](-lr * g_t)) / lr``, the
    defense's randomness seeded by ``(seed, client_ids[t], 0)``."""
    grads = single_image_gradients(model, torch.as_tensor(images), torch.as_tensor(labels), device=device)
    kinds = [k for k, (name, _) in zip(state_kinds(model), model.state_dict().items())
             if name in dict(model.named_parameters())]
    out = []
    ids = range(len(images)) if client_ids is None else client_ids
    for t, cid in enumerate(ids):
        payload = [(-lr * g[t]).cpu().numpy() for g in grads]
        defended = apply_defense(defenses[t], payload, kinds, defense_rng(seed, int(cid), 0))
        out.append([torch.as_tensor(-d / lr, dtype=torch.float32) for d in defended])
    return out


def attack_images(images: np.ndarray, labels: np.ndarray, num_classes: int,
                  defense: DefenseSpec | Sequence[DefenseSpec], cfg: ExperimentConfig, *,
                  device: str = "cpu", chunk: int = 64,
                  progress: Callable[[int], None] | None = None,
                  client_ids: Sequence[int] | None = None) -> tuple[Scores, list[dict]]:
    """Attack every image's defended single-image gradient; score; one row per image.

    ``cfg`` gives the client's ``lr``, the attacker and the attack's budget and seed.
    ``defense`` is one spec for all images, or one per image (all of the same defense, so
    that one attacker objective fits them: the sweep attacks all strengths of a defense in
    one vectorised batch).  ``client_ids[t]`` seeds target t's defense randomness
    (default: its position).

    ``labels`` are the labels the clients trained with.  Rows hold ``image`` (index),
    ``label``, ``label_pred``, ``ssim``, ``ssim_adjusted``, ``psnr``, ``mse``, ``leaked``,
    ``failed`` and ``seconds`` (the vectorised call's wall time shared equally by its
    targets).
    """
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    defenses = [defense] * n if isinstance(defense, DefenseSpec) else list(defense)
    if len(defenses) != n or len({d.name for d in defenses}) != 1:
        raise ValueError(f"give one defense, or one per image of a single kind; got {len(defenses)} for {n} images")
    model = fresh_lenet(c, h, num_classes, cfg.seed)
    observed = defended_gradients(model, images, labels, defenses, cfg.lr, cfg.seed, device, client_ids)
    config = attack_config(cfg.__class__(**{**cfg.__dict__, "defense": defenses[0]}), device=device,
                           batch_size=chunk)
    # one call: the engine keeps at most `chunk` targets in flight and refills the batch as
    # targets finish; each target's start is seeded by (seed, its index, try)
    res = invert_gradients(model, observed, (c, h, w), num_classes, config)
    recons, preds, failed = res.images, res.labels, res.failed
    seconds = [res.seconds / n] * n
    if progress:
        progress(n)
    scores = score_single(images, labels, recons, preds, cfg.leak_threshold)
    rows = [{"image": i, "label": int(labels[i]), "label_pred": int(preds[i]),
             "ssim": float(scores.ssim[i]), "ssim_adjusted": float(scores.ssim_adjusted[i]),
             "psnr": float(scores.psnr[i]), "mse": float(scores.mse[i]), "leaked": bool(scores.leaked[i]),
             "failed": bool(failed[i]), "seconds": round(seconds[i], 3)} for i in range(n)]
    return scores, rows
