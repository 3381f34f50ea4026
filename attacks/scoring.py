"""Scoring reconstructions against the truth -- the only place that sees private images.

The attack (:mod:`attacks.inversion`) gets payloads only; the scorer gets the attack's
output and the truth, and never feeds anything back to the attack.

One-to-one matching
-------------------
A client that trained on N private images in a round yields M reconstructions (M = N for
a batch attack, 1 for a single-image attack).  They are matched one-to-one to the N
images by the assignment that maximises the total brightness-adjusted SSIM (the linear
sum assignment problem, solved by :func:`scipy.optimize.linear_sum_assignment`, Crouse
2016).  Every private image is scored exactly once: an image no reconstruction was
assigned to scores as not leaked (SSIM 0), so a client that touched 32 images and yields
one good reconstruction leaks 1/32 of its images, not "the best of 32".

References
----------
Crouse, D. F. (2016). On implementing 2D rectangular assignment algorithms. IEEE
Transactions on Aerospace and Electronic Systems 52(4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from fl_defense import metrics


@dataclass
class Scores:
    """Per-private-image scores (arrays of length T, one entry per image) and the images a
    grid shows.  ``client[t]`` is the position of the image's client in the call;
    ``matched[t]`` whether a reconstruction was assigned to it (if not, ``recons[t]`` and
    ``adjusted[t]`` are zeros, its SSIMs 0, its PSNR 0 and its predicted label -1)."""

    ssim: np.ndarray
    ssim_adjusted: np.ndarray
    psnr: np.ndarray
    mse: np.ndarray
    label_true: np.ndarray
    label_pred: np.ndarray
    leaked: np.ndarray
    client: np.ndarray
    matched: np.ndarray
    truths: np.ndarray      # [T, C, H, W]
    recons: np.ndarray      # [T, C, H, W], the reconstruction assigned to each image
    adjusted: np.ndarray    # [T, C, H, W], brightness-adjusted

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Means over the private images: SSIM, adjusted SSIM, PSNR (capped at 100 dB),
        label accuracy (labels of -1 are unknown and left out), the number leaked."""
        known = self.label_true >= 0
        return {
            f"{prefix}ssim_mean": float(np.mean(self.ssim)),
            f"{prefix}ssim_max": float(np.max(self.ssim)),
            f"{prefix}ssim_adjusted_mean": float(np.mean(self.ssim_adjusted)),
            f"{prefix}psnr_mean": float(np.mean(np.minimum(self.psnr, 100.0))),
            f"{prefix}label_acc": metrics.label_accuracy(self.label_true[known], self.label_pred[known])
            if known.any() else float("nan"),
            f"{prefix}leaked": int(np.sum(self.leaked)),
        }


def match(truths: np.ndarray, recons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one assignment of ``recons`` ``[M, C, H, W]`` to ``truths`` ``[N, C, H, W]``
    maximising the total adjusted SSIM: ``(adjusted SSIM matrix [N, M], assigned recon per
    truth [N], -1 where none)``."""
    sim = np.array([[metrics.ssim_adjusted(t, r) for r in recons] for t in truths], dtype=np.float64)
    assigned = np.full(len(truths), -1, dtype=np.int64)
    if sim.size:
        rows, cols = linear_sum_assignment(sim, maximize=True)
        assigned[rows] = cols
    return sim.reshape(len(truths), len(recons)), assigned


def score(truths: Sequence[np.ndarray], truth_labels: Sequence[np.ndarray], recons: Sequence[np.ndarray],
          pred_labels: Sequence[np.ndarray], threshold: float) -> Scores:
    """Score the reconstructions of several clients against their private images.

    ``truths[c]`` ``[N_c, C, H, W]`` and ``truth_labels[c]`` ``[N_c]`` are the images client c
    trained on; ``recons[c]`` ``[M_c, C, H, W]`` and ``pred_labels[c]`` ``[M_c]`` the attack's
    reconstructions of that client (matched one-to-one, see the module docstring).  Labels of
    -1 are unknown.  An image has leaked when its adjusted SSIM is at least ``threshold``.
    """
    if not (len(truths) == len(truth_labels) == len(recons) == len(pred_labels)):
        raise ValueError(f"give as many truth sets, label sets, reconstruction sets and predicted label "
                         f"sets; got {len(truths)}, {len(truth_labels)}, {len(recons)}, {len(pred_labels)}")
    rows = []
    for c, (tru, tlab, rec, plab) in enumerate(zip(truths, truth_labels, recons, pred_labels)):
        tru, rec = np.asarray(tru), np.asarray(rec)
        if len(tru) != len(tlab) or len(rec) != len(plab):
            raise ValueError(f"client {c}: {len(tru)} images with {len(tlab)} labels, {len(rec)} "
                             f"reconstructions with {len(plab)} labels")
        sim, assigned = match(tru, rec)
        for i, j in enumerate(assigned):
            truth = tru[i]
            if j < 0:
                blank = np.zeros_like(truth)
                rows.append((0.0, 0.0, 0.0, float(np.mean(truth.astype(np.float64) ** 2)), int(tlab[i]), -1,
                             c, False, truth, blank, blank))
                continue
            recon = rec[j]
            rows.append((metrics.ssim(truth, recon), sim[i, j], metrics.psnr(truth, recon),
                         metrics.mse(truth, recon), int(tlab[i]), int(plab[j]), c, True, truth, recon,
                         metrics.adjust_brightness(truth, recon)))
    if not rows:
        raise ValueError("no private images to score")
    ssim, adj, psnr, mse, lt, lp, client, matched, tr, rc, ad = map(list, zip(*rows))
    adj = np.asarray(adj, dtype=np.float64)
    return Scores(ssim=np.asarray(ssim, dtype=np.float64), ssim_adjusted=adj,
                  psnr=np.asarray(psnr, dtype=np.float64), mse=np.asarray(mse, dtype=np.float64),
                  label_true=np.asarray(lt, dtype=np.int64), label_pred=np.asarray(lp, dtype=np.int64),
                  leaked=adj >= threshold, client=np.asarray(client, dtype=np.int64),
                  matched=np.asarray(matched, dtype=bool), truths=np.stack(tr), recons=np.stack(rc),
                  adjusted=np.stack(ad))


def score_single(truths: np.ndarray, labels: np.ndarray, recons: np.ndarray, pred_labels: np.ndarray,
                 threshold: float) -> Scores:
    """:func:`score` for single-image targets: reconstruction t against image t."""
    return score([t[None] for t in truths], [np.array([int(l)]) for l in labels], [r[None] for r in recons],
                 [np.array([int(p)]) for p in pred_labels], threshold)
