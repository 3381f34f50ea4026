"""Scoring reconstructions against the truth -- the only place that sees private images.

The attack (:mod:`attacks.inversion`) gets payloads only; the scorer gets the attack's
output and the truth, and never feeds anything back to the attack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fl_defense import metrics


@dataclass
class Scores:
    """Per-target scores (arrays of length T) and the images a grid shows."""

    ssim: np.ndarray
    ssim_adjusted: np.ndarray
    psnr: np.ndarray
    mse: np.ndarray
    label_true: np.ndarray
    label_pred: np.ndarray
    leaked: np.ndarray
    truths: np.ndarray      # [T, C, H, W], the matched truth of each target
    recons: np.ndarray      # [T, C, H, W]
    adjusted: np.ndarray    # [T, C, H, W], brightness-adjusted reconstructions

    def summary(self, prefix: str = "") -> dict[str, float]:
        known = self.label_true >= 0
        return {
            f"{prefix}ssim_mean": float(np.mean(self.ssim)),
            f"{prefix}ssim_max": float(np.max(self.ssim)),
            f"{prefix}ssim_adjusted_mean": float(np.mean(self.ssim_adjusted)),
            f"{prefix}psnr_mean": float(np.mean(np.minimum(self.psnr, 100.0))),
            f"{prefix}label_acc": float(np.mean(self.label_true[known] == self.label_pred[known]))
            if known.any() else float("nan"),
            f"{prefix}leaked": int(np.sum(self.leaked)),
        }


def score(truth_sets: list[np.ndarray], truth_labels: list[np.ndarray], recons: np.ndarray,
          pred_labels: np.ndarray, threshold: float) -> Scores:
    """Score reconstruction t against the candidates ``truth_sets[t]`` ``[K, C, H, W]``.

    With one candidate (a single-image gradient) this is a plain comparison; with several
    (a client that trained on a batch) the reconstruction is matched to the candidate it
    resembles most (highest brightness-adjusted SSIM), the usual convention for batch
    attacks.  Labels of -1 are unknown and do not count in the label accuracy.
    """
    rows = []
    for cands, labels, recon in zip(truth_sets, truth_labels, recons):
        best = None
        for truth, label in zip(cands, labels):
            adj_value = metrics.ssim_adjusted(truth, recon)
            if best is None or adj_value > best[0]:
                best = (adj_value, truth, int(label))
        adj_value, truth, label = best
        rows.append((metrics.ssim(truth, recon), adj_value, metrics.psnr(truth, recon),
                     metrics.mse(truth, recon), label, truth, metrics.adjust_brightness(truth, recon)))
    ssim, adj, psnr, mse, labels, truths, adjusted = map(list, zip(*rows))
    adj = np.asarray(adj, dtype=np.float64)
    return Scores(ssim=np.asarray(ssim, dtype=np.float64), ssim_adjusted=adj,
                  psnr=np.asarray(psnr, dtype=np.float64), mse=np.asarray(mse, dtype=np.float64),
                  label_true=np.asarray(labels, dtype=np.int64),
                  label_pred=np.asarray(pred_labels, dtype=np.int64),
                  leaked=adj >= threshold, truths=np.stack(truths), recons=np.asarray(recons),
                  adjusted=np.stack(adjusted))
