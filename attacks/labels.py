"""Label recovery from the last linear layer's observed gradient or update.

* one image, one step: iDLG (Zhao, Mopuri & Bilen 2020, arXiv:2001.02610),
  :func:`infer_label_idlg` / :func:`idlg_labels`;
* a batch, several steps: the label *counts* from the last layer's bias update
  (:func:`bias_label_counts`), the bias-corrected estimator of Geng et al. 2021 and
  Dimitrov et al. 2022 with the expected softmax of the batch estimated by simulating
  the client's steps on dummy data (the "impact" of Wainakh et al. 2022's LLG+ is the same
  idea for the weight rows); :func:`round_counts` turns real-valued counts into integers.

References
----------
Geng, Mou, Li, Lu, Li & Chen (2021). Towards General Deep Leakage in Federated Learning.
arXiv:2110.09074.
Wainakh, Ventola, Muessig, Keim, Gomez Cordero, Zimmer, Grube, Kersting & Muehlhaeuser
(2022). User-Level Label Leakage from Gradients in Federated Learning. PoPETs 2022(2).
Dimitrov, Balunovic, Konstantinov & Vechev (2022). Data Leakage in Federated Averaging.
TMLR.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from attacks.gradients import bias_index, last_linear_weight_index
from attacks.layerwise import Activation, Dense, Flatten, layer_chain


def infer_label_idlg(last_layer_weight_grad: Tensor | np.ndarray) -> int:
    """iDLG label inference (Zhao et al., 2020) from the last linear layer's weight gradient.

    For the cross-entropy of one example, row i of ``dL/dW`` (shape ``[K, F]``) is
    ``(softmax_i - 1[i = y]) * h`` with ``h`` the layer's input.  With non-negative features
    (sigmoid, ReLU) the true-label row is the only one with non-positive entries, the others
    being non-negative; the label is therefore the row with the smallest sum.  Taking the
    sum (rather than "all entries negative") keeps the rule usable when a defense zeroes or
    perturbs some entries.
    """
    w = torch.as_tensor(last_layer_weight_grad)
    if w.ndim != 2 or w.shape[0] < 2:
        raise ValueError(f"last_layer_weight_grad must be [num_classes >= 2, features]; "
                         f"got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("last_layer_weight_grad contains non-finite values")
    return int(w.double().sum(1).argmin())


def idlg_labels(last_layer_weight_grads: Tensor, nonnegative: bool = True,
                bias_grads: Tensor | None = None) -> Tensor:
    """:func:`infer_label_idlg` for T targets at once: ``[T, K, F]`` -> ``[T]`` labels.

    ``bias_grads`` ``[T, K]``, the last layer's bias gradient where it has one: for one image
    under cross-entropy it is ``p - y``, whose only negative entry is the label, whatever the
    features' sign or the number of classes.  A target whose bias gradient has exactly one
    negative entry takes that label; the others (a defense zeroed or perturbed it) take the
    weight rule below.

    ``nonnegative``: the last layer's input features are known non-negative (sigmoid, ReLU;
    :func:`features_nonnegative`), so the true-label row is the one of smallest sum (iDLG).
    Otherwise (tanh) the sign of the features is unknown: every row is ``c_i h`` with ``c_y < 0``
    the only negative coefficient, so the true row is the odd one out by the sign of its
    projection ``<row_i, row_r>`` on the largest row ``r``: the minimum when fewer projections
    are negative than positive, else the maximum (for non-negative features and no defense
    this is the same label as the smallest sum).

    Non-finite entries count as 0 (a target whose gradient is unusable gets some label; the
    attack marks it failed anyway).
    """
    w = torch.as_tensor(last_layer_weight_grads)
    if w.ndim != 3 or w.shape[1] < 2:
        raise ValueError(f"last_layer_weight_grads must be [T, num_classes >= 2, features]; "
                         f"got shape {tuple(w.shape)}")
    w = torch.nan_to_num(w.double(), nan=0.0, posinf=0.0, neginf=0.0)
    if nonnegative:
        labels = w.sum(2).argmin(1)
    else:
        ref = w[torch.arange(w.shape[0]), w.norm(dim=2).argmax(1)]          # [T, F]
        proj = torch.einsum("tkf,tf->tk", w, ref)
        fewer_negative = (proj < 0).sum(1) <= (proj > 0).sum(1)
        labels = torch.where(fewer_negative, proj.argmin(1), proj.argmax(1))
    if bias_grads is None:
        return labels
    bias = torch.nan_to_num(torch.as_tensor(bias_grads).double(), nan=0.0, posinf=0.0, neginf=0.0).to(labels.device)
    if bias.shape != w.shape[:2]:
        raise ValueError(f"bias_grads must be [T, num_classes] = {tuple(w.shape[:2])}; got {tuple(bias.shape)}")
    return torch.where((bias < 0).sum(1) == 1, bias.argmin(1), labels)


def observed_labels(model: torch.nn.Module, names: list[str], obs: list[Tensor]) -> Tensor:
    """:func:`idlg_labels` of T single-image gradients ``obs`` (one ``[T, ...]`` tensor per
    trainable parameter ``names`` of ``model``): the last linear layer's weight rows, the sign
    of its input features (:func:`features_nonnegative`) and its bias gradient where it has
    one.  ``[T]`` labels."""
    bi = bias_index(model, names)
    return idlg_labels(obs[last_linear_weight_index(model)].flatten(2), features_nonnegative(model),
                       None if bi is None else obs[bi])


def features_nonnegative(model: torch.nn.Module) -> bool:
    """Whether the input of the model's last linear layer is known to be non-negative: in a
    plain chain (:func:`attacks.layerwise.layer_chain`) the last layer before it, flattening
    aside, is a sigmoid or a ReLU.  ``True`` for models that are not a plain chain (BatchNorm
    CNNs end in ReLU here), as iDLG assumes."""
    chain = layer_chain(model)
    if chain is None:
        return True
    last = max(i for i, layer in enumerate(chain) if isinstance(layer, Dense))
    before = [layer for layer in chain[:last] if not isinstance(layer, Flatten)]
    return bool(before) and isinstance(before[-1], Activation) and before[-1].kind in ("sigmoid", "relu")


def round_counts(values: np.ndarray, total: int) -> np.ndarray:
    """Non-negative integers summing to ``total`` closest to ``values`` (negative values
    count as 0): the largest-remainder (Hamilton) rounding of ``values`` rescaled to sum
    to ``total``; ties go to the lower index."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0), 0, None)
    if total < 0:
        raise ValueError(f"total must be >= 0; got {total}")
    if v.sum() <= 0:
        v = np.ones_like(v)
    v = v * (total / v.sum())
    out = np.floor(v).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        order = np.lexsort((np.arange(len(v)), -(v - out)))
        out[order[:rest]] += 1
    return out


def bias_label_counts(bias_pseudo_grad: np.ndarray, prob_sum: np.ndarray, batch_size: int,
                      appearances: int, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Label counts of a client's N images from its last-layer bias update.

    A client trains K steps on batches of ``B`` (all the same size); with ``p_ik`` the
    softmax of image i at step k and ``y_i`` its one-hot label, the pseudo-gradient of the
    last layer's bias is ``d = (b_0 - b_K) / lr = sum_k (1/B) sum_{i in b_k} (p_ik - y_i)``,
    so the number of appearances of each class over the K steps is

        c = P - B d,      P = sum_k sum_{i in b_k} p_ik,

    with ``P`` (``prob_sum``) estimated by the caller (here: by simulating the steps on
    dummy images).  With each image trained on ``appearances / N`` times on average the
    counts of images are ``c * N / appearances``, rounded by :func:`round_counts`.

    Returns ``(integer counts [classes] summing to n_images, real-valued counts)``.
    """
    d = np.asarray(bias_pseudo_grad, dtype=np.float64)
    p = np.asarray(prob_sum, dtype=np.float64)
    if d.shape != p.shape or d.ndim != 1:
        raise ValueError(f"bias_pseudo_grad and prob_sum must both be [classes]; got {d.shape}, {p.shape}")
    if min(batch_size, appearances, n_images) < 1:
        raise ValueError(f"batch_size, appearances and n_images must be >= 1; got "
                         f"{batch_size}, {appearances}, {n_images}")
    real = (p - batch_size * d) * (n_images / appearances)
    return round_counts(real, n_images), real
