"""Scoring reconstructions against the private images -- the oracle, the only place that
sees them.

The attack (:mod:`attacks`) gets payloads only; the scorer gets the attack's output, the
private images and a public decoy pool (:mod:`fl_defense.decoys`), and never feeds anything
back to the attack.  An import-linter contract keeps :mod:`attacks` from importing this
module, the decoys and the data loaders.

One-to-one matching
-------------------
A client that trained on N private images in a round yields M reconstructions (M = N for
a batch attack).  They are matched one-to-one to the N images by the assignment that
maximises the total brightness-adjusted SSIM (the linear sum assignment problem, solved by
:func:`scipy.optimize.linear_sum_assignment`, Crouse 2016).  Every private image is scored
exactly once: an image no reconstruction was assigned to scores as not leaked (SSIM 0).

Two leak criteria, side by side
-------------------------------
* ``leaked_paper`` (Kim & Park's criterion, as this project reads it): the matched
  reconstruction's adjusted SSIM to the image is at least ``threshold``.
* ``leaked`` (identification, the headline): ``leaked_paper`` *and* the reconstruction
  identifies its private image among public look-alikes, by adjusted SSIM: it is closer to
  its private image than to every decoy of the pool (``ssim_decoy_max``, the best decoy's
  adjusted SSIM to the reconstruction, is below its own), and closer to the private image
  than every decoy is (``ssim_public_max``, the nearest decoy's adjusted SSIM to the private
  image, is below its own) -- it reveals more of the image than any public image does.
  Without a pool it is ``None``: "no decoys", never the paper's criterion in disguise.

Both conditions matter on small pools: a reconstruction that holds nothing of its image
beats the P decoys of a pool drawn like the private image with probability about 1/(P+1)
on each condition; measured on the embedded faces with 100 decoys and their mirrors, the
label-only attacker passed the first condition for 6 of 100 images and both for 2
(``benchmarks/null_floor.py``).

An image of a client whose attack ``failed`` (an unusable upload, or no try closer than a
zero gradient) counts as not leaked under both criteria and is counted in ``failed``.

Records
-------
:func:`save_record` writes an attack's reconstructions, matched indices, labels and private
images to a ``.npz``; :func:`rescore` scores such a record again with another pool or
threshold, without attacking again (``run_sim.py rescore``).

References
----------
Crouse, D. F. (2016). On implementing 2D rectangular assignment algorithms. IEEE
Transactions on Aerospace and Electronic Systems 52(4).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from fl_defense import metrics
from fl_defense.decoys import DecoyPool

__all__ = ["Scores", "match", "score", "save_record", "load_record", "rescore", "RECORD_FORMAT"]

RECORD_FORMAT = "fl-defense-reconstructions-1"


@dataclass
class Scores:
    """Per-private-image scores (arrays of length T, one entry per image).

    ``client[t]`` is the position of the image's client in the call; ``matched[t]`` whether a
    reconstruction was assigned to it (if not, ``recons[t]`` and ``adjusted[t]`` are zeros,
    its SSIMs 0, its PSNR 0 and its predicted label -1); ``assigned[t]`` that
    reconstruction's position among its client's (-1: none).  ``leaked`` is ``None`` when no
    decoy pool was given (``pool`` then ``None`` too)."""

    ssim: np.ndarray
    ssim_adjusted: np.ndarray
    psnr: np.ndarray
    mse: np.ndarray
    label_true: np.ndarray
    label_pred: np.ndarray
    leaked: np.ndarray | None
    leaked_paper: np.ndarray
    ssim_decoy_max: np.ndarray
    ssim_public_max: np.ndarray
    failed: np.ndarray
    client: np.ndarray
    matched: np.ndarray
    assigned: np.ndarray
    truths: np.ndarray      # [T, C, H, W]
    recons: np.ndarray      # [T, C, H, W], the reconstruction assigned to each image
    adjusted: np.ndarray    # [T, C, H, W], brightness-adjusted
    threshold: float
    pool: str | None

    @property
    def n(self) -> int:
        return len(self.ssim)

    def summary(self, prefix: str = "") -> dict[str, float | int | None]:
        """Means over the private images (SSIM, adjusted SSIM, PSNR capped at 100 dB, best
        decoy's adjusted SSIM), label accuracy (labels of -1 are unknown and left out), and
        the counts: ``images``, ``leaked`` (identification; ``None``: no decoys),
        ``leaked_paper`` and ``failed``."""
        known = self.label_true >= 0
        decoy = self.ssim_decoy_max[np.isfinite(self.ssim_decoy_max)]
        return {
            f"{prefix}ssim_mean": float(np.mean(self.ssim)),
            f"{prefix}ssim_max": float(np.max(self.ssim)),
            f"{prefix}ssim_adjusted_mean": float(np.mean(self.ssim_adjusted)),
            f"{prefix}ssim_decoy_max_mean": float(np.mean(decoy)) if decoy.size else None,
            f"{prefix}psnr_mean": float(np.mean(np.minimum(self.psnr, 100.0))),
            f"{prefix}label_acc": metrics.label_accuracy(self.label_true[known], self.label_pred[known])
            if known.any() else float("nan"),
            f"{prefix}images": self.n,
            f"{prefix}leaked": None if self.leaked is None else int(np.sum(self.leaked)),
            f"{prefix}leaked_paper": int(np.sum(self.leaked_paper)),
            f"{prefix}failed": int(np.sum(self.failed)),
        }

    def by_label(self, names: Sequence[str] = ()) -> dict[int, dict]:
        """The counts per true label (labels of -1, unknown, left out), in label order:
        ``{label: {"name": names[label] (the label as text past names), "images": n,
        "leaked": k (``None``: no decoys), "leaked_paper": k}}``."""
        out = {}
        for label in np.unique(self.label_true[self.label_true >= 0]).tolist():
            mine = self.label_true == label
            out[int(label)] = {"name": names[label] if label < len(names) else str(label), "images": int(mine.sum()),
                               "leaked": None if self.leaked is None else int(np.sum(self.leaked[mine])),
                               "leaked_paper": int(np.sum(self.leaked_paper[mine]))}
        return out

    def rows(self) -> list[dict]:
        """One mapping per private image: ``label``, ``label_pred``, ``ssim``, ``ssim_adjusted``,
        ``ssim_decoy_max`` and ``ssim_public_max`` (``None`` without a pool), ``psnr``, ``mse``,
        ``leaked`` (``None``: no decoys), ``leaked_paper``, ``failed``, ``matched``."""
        out = []
        for t in range(self.n):
            decoy, public = self.ssim_decoy_max[t], self.ssim_public_max[t]
            out.append({"label": int(self.label_true[t]), "label_pred": int(self.label_pred[t]),
                        "ssim": float(self.ssim[t]), "ssim_adjusted": float(self.ssim_adjusted[t]),
                        "ssim_decoy_max": float(decoy) if np.isfinite(decoy) else None,
                        "ssim_public_max": float(public) if np.isfinite(public) else None,
                        "psnr": float(self.psnr[t]), "mse": float(self.mse[t]),
                        "leaked": None if self.leaked is None else bool(self.leaked[t]),
                        "leaked_paper": bool(self.leaked_paper[t]), "failed": bool(self.failed[t]),
                        "matched": bool(self.matched[t])})
        return out


def match(truths: np.ndarray, recons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one assignment of ``recons`` ``[M, C, H, W]`` to ``truths`` ``[N, C, H, W]``
    maximising the total adjusted SSIM: ``(adjusted SSIM matrix [N, M], assigned recon per
    truth [N], -1 where none)``."""
    truths, recons = np.asarray(truths), np.asarray(recons)
    sim = np.zeros((len(truths), len(recons)), dtype=np.float64)
    if len(truths) and len(recons):
        prepared = metrics.ImageSet.of(truths)
        for j, r in enumerate(recons):
            sim[:, j] = metrics.ssim_adjusted_many(prepared, r)
    assigned = np.full(len(truths), -1, dtype=np.int64)
    if sim.size:
        rows, cols = linear_sum_assignment(sim, maximize=True)
        assigned[rows] = cols
    return sim, assigned


def judge(adj: np.ndarray, decoy: np.ndarray, public: np.ndarray, failed: np.ndarray, matched: np.ndarray,
          threshold: float, with_pool: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """``(leaked, leaked_paper)`` from the per-image adjusted SSIMs (see the module docstring)."""
    paper = (adj >= threshold) & matched & ~failed
    if not with_pool:
        return None, paper
    return paper & (adj > decoy) & (adj > public), paper


def score(truths: Sequence[np.ndarray], truth_labels: Sequence[np.ndarray], recons: Sequence[np.ndarray],
          pred_labels: Sequence[np.ndarray], threshold: float, pool: DecoyPool | None = None,
          failed: Sequence[bool] | None = None, decoy_labels: Sequence[np.ndarray] | None = None) -> Scores:
    """Score the reconstructions of several clients against their private images.

    Parameters
    ----------
    truths, truth_labels : per client c, the images ``[N_c, C, H, W]`` it trained on and their
        labels ``[N_c]`` (-1: unknown).
    recons, pred_labels : per client c, the attack's reconstructions ``[M_c, C, H, W]`` and the
        labels it made them with ``[M_c]``; matched one-to-one (see the module docstring).
    threshold : the adjusted SSIM an image's reconstruction must reach (both criteria).
    pool : the public decoy pool of the identification criterion (``None``: no decoys).
    failed : per client, whether its attack failed (its images count as not leaked).
    decoy_labels : per client, the labels that pick an image's candidate decoys (default
        ``truth_labels``; -1: compared with every decoy), for images whose training label
        was drawn at random and so says nothing about the decoys'.
    """
    if not (len(truths) == len(truth_labels) == len(recons) == len(pred_labels)):
        raise ValueError(f"give as many truth sets, label sets, reconstruction sets and predicted label "
                         f"sets; got {len(truths)}, {len(truth_labels)}, {len(recons)}, {len(pred_labels)}")
    failed = [False] * len(truths) if failed is None else [bool(f) for f in failed]
    decoy_labels = truth_labels if decoy_labels is None else decoy_labels
    if len(failed) != len(truths):
        raise ValueError(f"give one failed flag per client; got {len(failed)} for {len(truths)} clients")
    rows = []
    for c, (tru, tlab, rec, plab, dlab) in enumerate(zip(truths, truth_labels, recons, pred_labels, decoy_labels)):
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
                             c, False, -1, np.nan, np.nan, truth, blank, blank))
                continue
            recon = rec[j]
            decoy = pool.best(recon, int(dlab[i])) if pool is not None else np.nan
            public = pool.nearest(truth, int(dlab[i])) if pool is not None else np.nan
            rows.append((metrics.ssim(truth, recon), sim[i, j], metrics.psnr(truth, recon),
                         metrics.mse(truth, recon), int(tlab[i]), int(plab[j]), c, True, int(j), decoy, public,
                         truth, recon, metrics.adjust_brightness(truth, recon)))
    if not rows:
        raise ValueError("no private images to score")
    ssim, adj, psnr, mse, lt, lp, client, matched, assigned, decoy, public, tr, rc, ad = map(list, zip(*rows))
    adj, decoy = np.asarray(adj, dtype=np.float64), np.asarray(decoy, dtype=np.float64)
    public = np.asarray(public, dtype=np.float64)
    client, matched = np.asarray(client, dtype=np.int64), np.asarray(matched, dtype=bool)
    failed_img = np.asarray([failed[c] for c in client], dtype=bool)
    leaked, paper = judge(adj, decoy, public, failed_img, matched, threshold, pool is not None)
    return Scores(ssim=np.asarray(ssim, dtype=np.float64), ssim_adjusted=adj,
                  psnr=np.asarray(psnr, dtype=np.float64), mse=np.asarray(mse, dtype=np.float64),
                  label_true=np.asarray(lt, dtype=np.int64), label_pred=np.asarray(lp, dtype=np.int64),
                  leaked=leaked, leaked_paper=paper, ssim_decoy_max=decoy, ssim_public_max=public, failed=failed_img,
                  client=client,
                  matched=matched, assigned=np.asarray(assigned, dtype=np.int64), truths=np.stack(tr),
                  recons=np.stack(rc), adjusted=np.stack(ad), threshold=float(threshold),
                  pool=None if pool is None else pool.source)


# ------------------------------------------------------------------------------ records


def save_record(path: str | Path, scores: Scores, recons: Sequence[np.ndarray], pred_labels: Sequence[np.ndarray],
                names: Sequence[str], meta: dict) -> Path:
    """Write an attack's reconstructions (all of them, per client), the matched indices, the
    labels and the private images to ``path`` (``.npz``, atomically), with ``meta`` (the
    setting, the pool's ``spec``, the threshold) as JSON; :func:`rescore` reads it back."""
    from fl_defense.io import atomic_write_bytes

    recon_client = np.concatenate([np.full(len(r), c, dtype=np.int64) for c, r in enumerate(recons)])
    offsets = np.cumsum([0] + [len(r) for r in recons])[:-1]
    index = np.where(scores.assigned >= 0, offsets[scores.client] + scores.assigned, -1)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, format=np.array(RECORD_FORMAT), meta=np.array(json.dumps(meta, default=str)),
        reconstructions=np.concatenate([np.asarray(r, dtype=np.float32) for r in recons]),
        reconstruction_client=recon_client,
        reconstruction_label=np.concatenate([np.asarray(p, dtype=np.int64) for p in pred_labels]),
        truths=scores.truths.astype(np.float32), truth_label=scores.label_true, truth_client=scores.client,
        match=index.astype(np.int64), failed=scores.failed, names=np.array(list(names), dtype=str))
    return atomic_write_bytes(path, buf.getvalue())


def load_record(path: str | Path) -> dict:
    """A record written by :func:`save_record`: its arrays and its ``meta``; ``ValueError``
    naming the file when it is not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data or str(data["format"]) != RECORD_FORMAT:
                raise ValueError(f"{path} is not a reconstruction record ({RECORD_FORMAT})")
            out = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    out["meta"] = json.loads(str(out["meta"]))
    return out


def rescore(record: dict, threshold: float, pool: DecoyPool | None) -> Scores:
    """Score a record's matched reconstructions again with ``threshold`` and ``pool``
    (the matching is kept: it does not depend on either)."""
    truths, index = record["truths"], record["match"]
    clients = int(record["truth_client"].max()) + 1 if len(index) else 0
    failed_client = [bool(record["failed"][record["truth_client"] == c].any()) for c in range(clients)]
    per_truth = []
    for t in range(len(truths)):
        j = int(index[t])
        recon = record["reconstructions"][j] if j >= 0 else None
        per_truth.append(score([truths[t:t + 1]], [record["truth_label"][t:t + 1]],
                               [np.zeros((0, *truths.shape[1:])) if recon is None else recon[None]],
                               [np.zeros(0, np.int64) if recon is None else record["reconstruction_label"][j:j + 1]],
                               threshold, pool, [failed_client[int(record["truth_client"][t])]]))
    return _concat(per_truth, record["truth_client"], index)


def _concat(parts: list[Scores], client: np.ndarray, assigned: np.ndarray) -> Scores:
    def cat(name):
        return np.concatenate([getattr(p, name) for p in parts])

    leaked = None if parts[0].leaked is None else cat("leaked")
    return Scores(ssim=cat("ssim"), ssim_adjusted=cat("ssim_adjusted"), psnr=cat("psnr"), mse=cat("mse"),
                  label_true=cat("label_true"), label_pred=cat("label_pred"), leaked=leaked,
                  leaked_paper=cat("leaked_paper"), ssim_decoy_max=cat("ssim_decoy_max"),
                  ssim_public_max=cat("ssim_public_max"), failed=cat("failed"),
                  client=np.asarray(client, dtype=np.int64), matched=cat("matched"),
                  assigned=np.asarray(assigned, dtype=np.int64), truths=cat("truths"), recons=cat("recons"),
                  adjusted=cat("adjusted"), threshold=parts[0].threshold, pool=parts[0].pool)
