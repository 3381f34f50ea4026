"""Per-example gradients of a plain layer chain, written out layer by layer.

For a model that is a chain of ``nn.Conv2d`` (zero padding, no dilation, no groups),
element-wise activations (``nn.Sigmoid``, ``nn.Tanh``, ``nn.ReLU``), ``flatten`` and
``nn.Linear`` -- the DLG/iDLG LeNet is one -- the gradient of the cross-entropy of each
example with respect to every parameter has a closed form that back-propagation computes
layer by layer (Rumelhart, Hinton & Williams, 1986; the per-example form is the
"outer-product trick" of Goodfellow, 2015, "Efficient per-example gradient computations",
arXiv:1510.01799):

* linear ``o = W h + b``: ``dW_t = delta_t h_t^T``, ``db_t = delta_t``, ``delta_h = W^T delta_t``;
* convolution as a matrix product over the unfolded input (im2col,
  :func:`torch.nn.functional.unfold`): ``z_t = W cols(a_t) + b``, so
  ``dW_t = delta_t cols(a_t)^T`` (one batched matrix product over the examples),
  ``db_t = sum_l delta_t[:, l]`` and ``delta_a = fold(W^T delta_t)``;
* activations: ``delta_z = delta_a * s'(z)``; the output: ``delta = softmax(out) - p`` with
  ``p`` the one-hot label (iDLG) or ``softmax(label logits)`` (DLG).

Every step is an ordinary differentiable tensor operation, so the matching loss built on
these gradients is back-propagated to the dummy images by one plain autograd pass.  The
values equal those of ``torch.func.vmap(torch.func.grad(...))`` (:func:`per_example_grad_fn`,
checked by the tests) at a fraction of the cost: no grouped convolutions, no autograd graph
built for the first derivative, no vmap dispatch.  :func:`layer_chain` returns ``None`` for
any other model, and the attack then uses the vmap path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.objectives import matching_loss

__all__ = ["Conv", "Activation", "Flatten", "Dense", "layer_chain", "layerwise_grad_fn",
           "fused_loss_grad_fn"]

ACTIVATIONS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.ReLU: "relu",
               torch.sigmoid: "sigmoid", torch.tanh: "tanh", torch.relu: "relu", F.relu: "relu",
               "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}


@dataclass(frozen=True)
class Conv:
    weight: str
    bias: str | None
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class Activation:
    kind: str


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dense:
    weight: str
    bias: str | None


Layer = Conv | Activation | Flatten | Dense


def _module_layer(module: nn.Module, prefix: str) -> Layer | None:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or tuple(module.dilation) != (1, 1) \
                or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return Conv(f"{prefix}.weight", f"{prefix}.bias" if module.bias is not None else None,
                    tuple(module.kernel_size), tuple(module.stride), tuple(module.padding))
    if isinstance(module, nn.Linear):
        return Dense(f"{prefix}.weight", f"{prefix}.bias" if module.bias is not None else None)
    if type(module) in ACTIVATIONS and not getattr(module, "inplace", False):
        return Activation(ACTIVATIONS[type(module)])
    if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
        return Flatten()
    return None


def layer_chain(model: nn.Module) -> list[Layer] | None:
    """The model as a chain of supported layers (traced by :mod:`torch.fx`), or ``None``.

    ``None`` when the model cannot be traced, has buffers (BatchNorm), or its graph is
    anything but a chain ``x -> layer -> layer -> ... -> output`` of the supported layers
    ending in a linear layer.
    """
    if any(True for _ in model.buffers()):
        return None
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 -- any tracing failure means "not a plain chain"
        return None
    modules = dict(model.named_modules())
    chain: list[Layer] = []
    prev = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return None
            prev = node
            continue
        if prev is None or len(node.all_input_nodes) != 1 or node.all_input_nodes[0] is not prev:
            return None
        if node.op == "output":
            break
        layer: Layer | None = None
        if node.op == "call_module":
            layer = _module_layer(modules[node.target], node.target)
        elif node.op in ("call_function", "call_method") and node.target in ACTIVATIONS \
                and len(node.args) == 1 and not node.kwargs:
            layer = Activation(ACTIVATIONS[node.target])
        elif node.op == "call_method" and node.target == "flatten" and not node.kwargs \
                and tuple(node.args[1:]) in ((1,), (1, -1)):
            layer = Flatten()
        elif node.op == "call_function" and node.target is torch.flatten and not node.kwargs \
                and tuple(node.args[1:]) in ((1,), (1, -1)):
            layer = Flatten()
        if layer is None:
            return None
        chain.append(layer)
        prev = node
    if not chain or not isinstance(chain[-1], Dense):
        return None
    return chain


def _act_grad(kind: str, out: Tensor, pre: Tensor, delta: Tensor) -> Tensor:
    if kind == "sigmoid":
        return delta * out * (1.0 - out)
    if kind == "tanh":
        return delta * (1.0 - out * out)
    return delta * (pre > 0)


def layerwise_grad_fn(model: nn.Module, names: list[str], params: dict[str, Tensor],
                      soft: bool) -> Callable[[Tensor, Tensor], list[Tensor]] | None:
    """``f(x [T,C,H,W], y) -> [grad_p [T, ...] for p in names]`` for a plain chain, else ``None``.

    The same contract as :func:`attacks.gradients.per_example_grad_fn` (hard labels ``[T]``
    or label logits ``[T, K]`` when ``soft``), differentiable with respect to ``x`` and ``y``.
    """
    chain = layer_chain(model)
    if chain is None:
        return None
    used = {n for layer in chain if isinstance(layer, (Conv, Dense))
            for n in (layer.weight, layer.bias) if n is not None}
    if used != set(names):
        return None
    flat = {n: params[n].reshape(params[n].shape[0], -1) for n in names}

    def f(x: Tensor, y: Tensor) -> list[Tensor]:
        u = x.shape[0]
        saved: list[tuple] = []
        a = x
        for layer in chain:
            if isinstance(layer, Conv):
                h, w = a.shape[-2:]
                cols = F.unfold(a, layer.kernel, padding=layer.padding, stride=layer.stride)
                z = torch.matmul(flat[layer.weight], cols)
                if layer.bias is not None:
                    z = z + params[layer.bias][:, None]
                ho = (h + 2 * layer.padding[0] - layer.kernel[0]) // layer.stride[0] + 1
                wo = (w + 2 * layer.padding[1] - layer.kernel[1]) // layer.stride[1] + 1
                saved.append((cols, (h, w)))
                a = z.view(u, -1, ho, wo)
            elif isinstance(layer, Activation):
                pre = a
                a = torch.sigmoid(a) if layer.kind == "sigmoid" else \
                    torch.tanh(a) if layer.kind == "tanh" else torch.relu(a)
                saved.append((a, pre))
            elif isinstance(layer, Flatten):
                saved.append((a.shape,))
                a = a.flatten(1)
            else:
                saved.append((a,))
                a = F.linear(a, params[layer.weight],
                             params[layer.bias] if layer.bias is not None else None)
        target = F.softmax(y, -1) if soft else F.one_hot(y, a.shape[-1]).to(a.dtype)
        delta = F.softmax(a, -1) - target
        grads: dict[str, Tensor] = {}
        for i in range(len(chain) - 1, -1, -1):
            layer, rec = chain[i], saved[i]
            if isinstance(layer, Dense):
                (inp,) = rec
                grads[layer.weight] = delta[:, :, None] * inp[:, None, :]
                if layer.bias is not None:
                    grads[layer.bias] = delta
                if i > 0:
                    delta = delta @ params[layer.weight]
            elif isinstance(layer, Flatten):
                delta = delta.view(rec[0])
            elif isinstance(layer, Activation):
                delta = _act_grad(layer.kind, rec[0], rec[1], delta)
            else:
                cols, size = rec
                dz = delta.flatten(2)
                grads[layer.weight] = torch.bmm(dz, cols.mT).view(u, *params[layer.weight].shape)
                if layer.bias is not None:
                    grads[layer.bias] = dz.sum(2)
                if i > 0:
                    dcols = torch.matmul(flat[layer.weight].T, dz)
                    delta = F.fold(dcols, size, layer.kernel, padding=layer.padding,
                                   stride=layer.stride)
        return [grads[n] for n in names]

    return f


def _act_slope(kind: str, out: Tensor) -> Tensor:
    """``s'(z)`` written with the activation's output ``a = s(z)``."""
    if kind == "sigmoid":
        return out * (1.0 - out)
    if kind == "tanh":
        return 1.0 - out * out
    return (out > 0).to(out.dtype)


def _act_curvature(kind: str, out: Tensor) -> Tensor | None:
    """``d s'(z) / d a`` as a function of ``a`` (``None``: zero, ReLU)."""
    if kind == "sigmoid":
        return 1.0 - 2.0 * out
    if kind == "tanh":
        return -2.0 * out
    return None


def fused_loss_grad_fn(model: nn.Module, names: list[str], params: dict[str, Tensor],
                       soft: bool, objective: str = "l2"
                       ) -> Callable[[Tensor, Tensor, list[Tensor]],
                                     tuple[Tensor, Tensor, Tensor | None]] | None:
    """Matching loss of a plain chain and its gradient with respect to the dummy inputs, the
    double back-propagation written out by hand; ``None`` for any other model.

    Returns ``f(x [U,C,H,W], y, observed) -> (loss [U], dloss/dx [U,C,H,W], dloss/dy [U,K]
    or None)`` where ``loss = matching_loss(per-example gradients, observed, objective)``
    (:func:`attacks.objectives.matching_loss`; ``y``: hard labels ``[U]``, or label logits
    ``[U, K]`` when ``soft``, the only case where the label gradient is returned).

    Three sweeps, all without an autograd graph over the network:

    1. forward, keeping the unfolded inputs of the convolutions and the activations;
    2. back-propagation of the cross-entropy (the per-example gradients ``G``, as in
       :func:`layerwise_grad_fn`), keeping every layer's ``delta``;
    3. the adjoint of sweep 2 in reverse order (Pearlmutter, 1994, "Fast exact multiplication
       by the Hessian", Neural Comput. 6(1), for the reverse-over-reverse pattern): from
       ``Gbar = dloss/dG`` (autograd over ``objective_fn`` alone, cheap) it carries
       ``deltabar`` from the first layer to the output, collecting on the way the adjoints
       of the forward quantities (the unfolded inputs through ``dW_t = delta_t cols_t^T``,
       the activations through ``s'``), then the softmax adjoint, then
       ordinary back-propagation of those adjoints through the forward sweep.  The two
       contributions to each unfolded input are summed before one ``fold``.

    Shared-weight products are plain matrix products (or ``conv2d`` for the adjoint of a
    transposed convolution); only ``dW_t`` and its adjoint are per example (``bmm``).
    """
    chain = layer_chain(model)
    if chain is None:
        return None
    used = {n for layer in chain if isinstance(layer, (Conv, Dense))
            for n in (layer.weight, layer.bias) if n is not None}
    if used != set(names):
        return None
    flat = {n: params[n].reshape(params[n].shape[0], -1) for n in names}
    n_layers = len(chain)

    def f(x: Tensor, y: Tensor, observed: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        u = x.shape[0]
        # sweep 1: forward
        ins: list[object] = []   # per layer: what its backward needs from the forward
        shapes: list[torch.Size] = []
        a = x
        for layer in chain:
            shapes.append(a.shape)
            if isinstance(layer, Conv):
                h, w = a.shape[-2:]
                cols = F.unfold(a, layer.kernel, padding=layer.padding, stride=layer.stride)
                z = torch.matmul(flat[layer.weight], cols)
                if layer.bias is not None:
                    z = z + params[layer.bias][:, None]
                ho = (h + 2 * layer.padding[0] - layer.kernel[0]) // layer.stride[0] + 1
                wo = (w + 2 * layer.padding[1] - layer.kernel[1]) // layer.stride[1] + 1
                ins.append(cols)
                a = z.view(u, -1, ho, wo)
            elif isinstance(layer, Activation):
                a = torch.sigmoid(a) if layer.kind == "sigmoid" else \
                    torch.tanh(a) if layer.kind == "tanh" else torch.relu(a)
                ins.append(a)   # the output: s' and s'' are written with it
            elif isinstance(layer, Flatten):
                ins.append(None)
                a = a.flatten(1)
            else:
                ins.append(a)
                a = F.linear(a, params[layer.weight],
                             params[layer.bias] if layer.bias is not None else None)
        prob = F.softmax(a, -1)
        target = F.softmax(y, -1) if soft else F.one_hot(y, a.shape[-1]).to(a.dtype)

        # sweep 2: back-propagation of the cross-entropy, per example
        deltas: list[Tensor] = [None] * n_layers  # type: ignore[list-item]  # delta at each output
        grads: dict[str, Tensor] = {}
        delta = prob - target
        for i in range(n_layers - 1, -1, -1):
            layer, rec = chain[i], ins[i]
            deltas[i] = delta
            if isinstance(layer, Dense):
                grads[layer.weight] = delta[:, :, None] * rec[:, None, :]
                if layer.bias is not None:
                    grads[layer.bias] = delta
                if i > 0:
                    delta = delta @ params[layer.weight]
            elif isinstance(layer, Flatten):
                delta = delta.view(shapes[i])
            elif isinstance(layer, Activation):
                delta = delta * _act_slope(layer.kind, rec)
            else:
                dz = delta.flatten(2)
                grads[layer.weight] = torch.bmm(dz, rec.mT).view(u, *params[layer.weight].shape)
                if layer.bias is not None:
                    grads[layer.bias] = dz.sum(2)
                if i > 0:
                    delta = F.fold(torch.matmul(flat[layer.weight].T, dz), shapes[i][-2:],
                                   layer.kernel, padding=layer.padding, stride=layer.stride)

        leaves = [grads[n].detach().requires_grad_(True) for n in names]
        with torch.enable_grad():
            loss = matching_loss(leaves, observed, objective)
            gbar_list = torch.autograd.grad(loss.sum(), leaves)
        gbar = dict(zip(names, gbar_list))

        # sweep 3a: adjoint of sweep 2, first layer to output
        fadj: list[Tensor | None] = [None] * n_layers   # adjoint of each layer's output
        cols_bar: list[Tensor | None] = [None] * n_layers
        in_bar: list[Tensor | None] = [None] * n_layers  # extra adjoint of a dense input
        dbar: Tensor | None = None  # adjoint of the delta a layer passed to its input
        for i, layer in enumerate(chain):
            delta, rec = deltas[i], ins[i]
            if isinstance(layer, Conv):
                gw = gbar[layer.weight].reshape(u, flat[layer.weight].shape[0], -1)
                dz = delta.flatten(2)
                out_bar = torch.bmm(gw, rec)
                if layer.bias is not None:
                    out_bar = out_bar + gbar[layer.bias][:, :, None]
                if dbar is not None:
                    out_bar = out_bar + F.conv2d(dbar, params[layer.weight], stride=layer.stride,
                                                 padding=layer.padding).flatten(2)
                cols_bar[i] = torch.bmm(gw.mT, dz)
                dbar = out_bar.view(delta.shape)
            elif isinstance(layer, Dense):
                gw = gbar[layer.weight]
                out_bar = torch.bmm(gw, rec[:, :, None]).squeeze(-1)
                if layer.bias is not None:
                    out_bar = out_bar + gbar[layer.bias]
                if dbar is not None:
                    out_bar = out_bar + dbar @ params[layer.weight].T
                in_bar[i] = torch.bmm(delta[:, None, :], gw).squeeze(1)
                dbar = out_bar
            elif isinstance(layer, Flatten):
                dbar = None if dbar is None else dbar.reshape(delta.shape)
            elif dbar is not None:
                curv = _act_curvature(layer.kind, rec)
                if curv is not None:
                    fadj[i] = dbar * delta * curv
                dbar = dbar * _act_slope(layer.kind, rec)
        # the output: delta = softmax(out) - target
        assert dbar is not None
        out_adj = prob * (dbar - (prob * dbar).sum(-1, keepdim=True))
        y_bar = -target * (dbar - (target * dbar).sum(-1, keepdim=True)) if soft else None
        fadj[-1] = out_adj if fadj[-1] is None else fadj[-1] + out_adj

        # sweep 3b: back-propagation of the collected adjoints through the forward sweep
        for i in range(n_layers - 1, -1, -1):
            layer, rec, ob = chain[i], ins[i], fadj[i]
            if isinstance(layer, Conv):
                cb = cols_bar[i]
                if ob is not None:
                    cb = cb + torch.matmul(flat[layer.weight].T, ob.flatten(2))
                ib = F.fold(cb, shapes[i][-2:], layer.kernel, padding=layer.padding,
                            stride=layer.stride)
            elif isinstance(layer, Dense):
                ib = in_bar[i]
                if ob is not None:
                    ib = ib + ob @ params[layer.weight]
            elif ob is None:
                ib = None
            elif isinstance(layer, Flatten):
                ib = ob.view(shapes[i])
            else:
                ib = ob * _act_slope(layer.kind, rec)
            if i > 0:
                if ib is not None:
                    fadj[i - 1] = ib if fadj[i - 1] is None else fadj[i - 1] + ib
            else:
                x_bar = torch.zeros_like(x) if ib is None else ib.reshape(x.shape)
        return loss.detach(), x_bar, y_bar

    return f
