"""Label recovery from the last linear layer's observed gradient (iDLG, Zhao et al. 2020)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


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


def idlg_labels(last_layer_weight_grads: Tensor) -> Tensor:
    """:func:`infer_label_idlg` for T targets at once: ``[T, K, F]`` -> ``[T]`` labels.

    Non-finite entries count as 0 (a target whose gradient is unusable gets some label; the
    attack marks it failed anyway).
    """
    w = torch.as_tensor(last_layer_weight_grads)
    if w.ndim != 3 or w.shape[1] < 2:
        raise ValueError(f"last_layer_weight_grads must be [T, num_classes >= 2, features]; "
                         f"got shape {tuple(w.shape)}")
    rows = torch.nan_to_num(w.double(), nan=0.0, posinf=0.0, neginf=0.0).sum(2)
    return rows.argmin(1)
