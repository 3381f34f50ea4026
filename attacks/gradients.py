"""Gradients of the model, as an attacker computes them: functionally, per example.

The model is used through :func:`torch.func.functional_call` with given parameter values,
so an attack never modifies it; per-example gradients come from
``torch.func.vmap(torch.func.grad(...))`` and stay differentiable with respect to the inputs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap


def params_and_buffers(model: nn.Module, params: dict[str, Tensor] | None,
                        device: torch.device) -> tuple[list[str], dict[str, Tensor], dict[str, Tensor]]:
    names = [n for n, _ in model.named_parameters()]
    if params is None:
        params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"params lacks the model parameters {missing}")
    p = {n: params[n].detach().to(device=device, dtype=torch.float32) for n in names}
    b = {n: t.detach().to(device).clone() for n, t in model.named_buffers()}
    return names, p, b


def per_example_grad_fn(model: nn.Module, names: list[str], params: dict[str, Tensor],
                         buffers: dict[str, Tensor], soft: bool) -> Callable[[Tensor, Tensor], list[Tensor]]:
    """``f(x [T,C,H,W], y) -> [grad_p [T, ...] for p in names]``, differentiable w.r.t. x and y.

    ``y`` holds class indices ``[T]`` (hard) or label logits ``[T, K]`` (soft, DLG: the target
    distribution is ``softmax(y)``).  Buffers are given to each example as its own copy, so
    BatchNorm running-statistic updates stay inside the vmap.
    """

    def loss_one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, b), (x.unsqueeze(0),))
        if soft:
            return -(F.softmax(y, -1) * F.log_softmax(out[0], -1)).sum()
        return -F.log_softmax(out[0], -1).gather(0, y.unsqueeze(0)).sum()

    g = vmap(grad(loss_one), in_dims=(None, 0, 0, 0), randomness="different")

    def f(x: Tensor, y: Tensor) -> list[Tensor]:
        t = x.shape[0]
        b = {k: v.unsqueeze(0).expand(t, *v.shape).clone() for k, v in buffers.items()}
        out = g(params, b, x, y)
        return [out[n] for n in names]

    return f


def single_image_gradients(model: nn.Module, images: Tensor, labels: Tensor,
                           params: dict[str, Tensor] | None = None,
                           device: str = "cpu") -> list[Tensor]:
    """The true gradient of the cross-entropy for each single image (what a client sends).

    Args:
        model: the network; used functionally with ``params`` (default: its own parameters).
        images: ``[T, C, H, W]`` images; labels: ``[T]`` class indices.
    Returns:
        One tensor per parameter, in ``model.named_parameters()`` order, shaped ``[T, *p.shape]``
        (the "stacked" payload :func:`invert_gradients` accepts); entry t is
        ``d CE(f(images[t:t+1]), labels[t:t+1]) / d p``.  Computed in one pass with
        ``torch.func.vmap(torch.func.grad(...))``.
    """
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be [T, C, H, W]; got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}")
    dev = torch.device(device)
    names, p, b = params_and_buffers(model, params, dev)
    f = per_example_grad_fn(model, names, p, b, soft=False)
    with torch.no_grad():
        out = f(images.to(dev, torch.float32), labels.to(dev, torch.long))
    return [t.detach() for t in out]


def last_linear_weight_index(model: nn.Module) -> int:
    """Index, in ``model.named_parameters()``, of the weight of the last ``nn.Linear`` layer."""
    last = None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = f"{mod_name}.weight" if mod_name else "weight"
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; iDLG needs one")
    names = [n for n, _ in model.named_parameters()]
    return names.index(last)


def bias_index(model: nn.Module, names: list[str]) -> int | None:
    """Position, among the trainable parameters ``names``, of the last linear layer's bias
    (``None`` without one)."""
    w = last_linear_weight_index(model)
    bias = names[w].rsplit(".", 1)[0] + ".bias" if "." in names[w] else "bias"
    return names.index(bias) if bias in names else None
