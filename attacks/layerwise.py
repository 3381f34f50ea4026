"""The matching loss of a plain layer chain and its input gradient, back-propagation written out.

An iDLG/DLG attack evaluates, for U dummy images at once, ``loss_t = D(G_t, O_t)`` with
``G_t = d CE(f(x_t), y_t) / d theta`` the per-example gradient of the model and ``O_t`` the
observed one, and needs ``d loss_t / d x_t``: a double back-propagation.  Generic autograd
does it with ``torch.func.vmap`` (grouped convolutions per example) and a second graph over
the first.  For a model that is a chain of ``nn.Conv2d`` (zero padding, no dilation, no
groups), element-wise activations (``nn.Sigmoid``, ``nn.Tanh``, ``nn.ReLU``), ``flatten``
and ``nn.Linear`` -- the DLG/iDLG LeNet is one -- every step has a closed form
(:func:`fused_loss_grad_fn`), computed here with batched matrix products over the unfolded
inputs (im2col) and no autograd graph over the network:

* forward: ``z_t = W cols(a_t) + b`` for a convolution (``cols``: the unfolded input
  ``[C k k, L]``), ``o_t = W h_t + b`` for a linear layer, ``a = s(z)``;
* back-propagation of the cross-entropy (Rumelhart, Hinton & Williams, 1986), per example
  (the outer-product form of Goodfellow, 2015, "Efficient per-example gradient
  computations", arXiv:1510.01799): ``delta = softmax(o) - p`` (``p``: the one-hot label,
  iDLG, or ``softmax`` of the label logits, DLG); linear ``G_W = delta h^T``, ``G_b = delta``,
  ``delta_h = W^T delta``; convolution ``G_W = delta cols^T`` (one ``bmm`` over the
  examples), ``G_b = sum_l delta``, ``delta_a = conv_transpose(delta, W)``; activation
  ``delta_z = delta_a s'(z)``;
* the adjoint of that back-propagation, i.e. reverse mode over reverse mode (Pearlmutter,
  1994, "Fast exact multiplication by the Hessian", Neural Comput. 6(1)): from
  ``Gbar = d loss / d G`` it carries ``deltabar`` from the first layer to the output,
  collecting the adjoints of the forward quantities on the way (of ``cols`` through
  ``G_W = delta cols^T``, of the activations through ``s'``, of ``h`` through ``G_W``), then
  through the softmax, and back-propagates those adjoints through the forward sweep; the
  two contributions to each unfolded input are summed before a single ``fold``.

The values equal those of the vmap path (checked by the tests, to float64 rounding).
:func:`layer_chain` returns ``None`` for any other model (BatchNorm, pooling, branches),
and the attack then uses the vmap path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attacks.objectives import OBJECTIVES, matching_loss

__all__ = ["Conv", "Activation", "Flatten", "Dense", "layer_chain", "fused_loss_grad_fn",
           "flatten_observed", "chain_forward", "trainable_chain"]

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


def trainable_chain(model: nn.Module, names: list[str]) -> list[Layer] | None:
    """:func:`layer_chain`, when its weights and biases are exactly the parameters ``names``
    (the ones the attack differentiates), else ``None``."""
    chain = layer_chain(model)
    if chain is None:
        return None
    used = {n for layer in chain if isinstance(layer, (Conv, Dense))
            for n in (layer.weight, layer.bias) if n is not None}
    return chain if used == set(names) else None


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




def _unfold(a: Tensor, layer: Conv) -> Tensor:
    """``F.unfold`` (im2col, ``[U, C kh kw, L]``) as one strided copy (equal values; a strided
    view and one copy instead of ATen's im2col kernel, for small inputs on the CPU)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    v = a.unfold(2, kh, sh).unfold(3, kw, sw)  # [U, C, Ho, Wo, kh, kw], a view
    u, c, ho, wo = v.shape[:4]
    return v.permute(0, 1, 4, 5, 2, 3).reshape(u, c * kh * kw, ho * wo)


def _activate(kind: str, a: Tensor) -> Tensor:
    return torch.sigmoid(a) if kind == "sigmoid" else torch.tanh(a) if kind == "tanh" else torch.relu(a)


def chain_forward(chain: list[Layer], params: dict[str, Tensor], x: Tensor, targets: int) -> Tensor:
    """The chain's output for ``targets`` T models at once, each with its own weights.

    ``params[name]`` is ``[T, ...]`` (one set of weights per target; an ``expand`` of shared
    weights is fine), ``x`` is ``[T * M, C, H, W]``: M inputs per target, target-major.
    Returns the logits ``[T * M, classes]``.  A convolution is written as a matrix product
    over the unfolded input (``F.unfold``, im2col), ``z_t = W_t cols(a_t) + b_t``, so that the
    per-target weights are a batched matrix product rather than the grouped convolutions
    ``torch.func.vmap`` makes; differentiable (twice) by plain autograd.  For a few small
    targets this costs less than the vmap of ``functional_call`` (measured in
    :mod:`attacks.multistep`, where it simulates local steps)."""
    a = x
    for layer in chain:
        if isinstance(layer, Conv):
            cols = F.unfold(a, layer.kernel, padding=layer.padding, stride=layer.stride)  # [T M, C k k, L]
            tm, ck, length = cols.shape
            w = params[layer.weight]
            z = torch.matmul(w.reshape(targets, 1, w.shape[1], -1), cols.view(targets, tm // targets, ck, length))
            if layer.bias is not None:
                z = z + params[layer.bias][:, None, :, None]
            h, wd = a.shape[-2:]
            ho = (h + 2 * layer.padding[0] - layer.kernel[0]) // layer.stride[0] + 1
            wo = (wd + 2 * layer.padding[1] - layer.kernel[1]) // layer.stride[1] + 1
            a = z.reshape(tm, -1, ho, wo)
        elif isinstance(layer, Activation):
            a = _activate(layer.kind, a)
        elif isinstance(layer, Flatten):
            a = a.flatten(1)
        else:
            out = torch.matmul(a.view(targets, -1, a.shape[-1]), params[layer.weight].mT)
            if layer.bias is not None:
                out = out + params[layer.bias][:, None, :]
            a = out.reshape(-1, out.shape[-1])
    return a


def _adjoint_l2(g: Tensor, o: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    diff = g - o
    if mask is not None:
        diff = diff * mask
    return (diff * diff).sum(1), 2.0 * diff


def fused_loss_grad_fn(model: nn.Module, names: list[str], params: dict[str, Tensor],
                       soft: bool, objective: str = "l2"
                       ) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None:
    """Matching loss of a plain chain and its gradient with respect to the dummy inputs;
    ``None`` when the model is not a plain chain (see the module docstring).

    Returns ``f(x [U,C,H,W], y, observed [T, P], group=1) -> (loss [T], dloss/dx [U,C,H,W], dloss/dy)``
    with ``U = T * group``: each run of ``group`` consecutive inputs is one target whose
    gradient is the mean of their per-example gradients (one SGD step on a batch of
    ``group`` images with a mean-reduced cross-entropy); ``group=1`` is the single-image case.  ``observed`` holds the observed gradients flattened and concatenated in ``names``
    order (:func:`flatten_observed`), ``loss = matching_loss([G], [observed], objective)``
    (:func:`attacks.objectives.matching_loss` on the concatenated per-target gradients ``G``;
    the same value as on the per-parameter lists), ``y`` the hard labels ``[U]`` or, when
    ``soft``, the label logits ``[U, K]``; ``dloss/dy`` ``[U, K]`` is returned only then (else
    ``None``).  the squared distances (``l2``, ``l2-support``) have their adjoint in closed form; any other
    objective is differentiated by autograd on ``G`` alone (cheap: element-wise).
    """
    chain = trainable_chain(model, names)
    if chain is None:
        return None
    flat = {n: params[n].reshape(params[n].shape[0], -1) for n in names}
    flat_t = {n: v.T.contiguous() for n, v in flat.items()}
    sizes = [params[n].numel() for n in names]
    n_layers = len(chain)

    def f(x: Tensor, y: Tensor, observed: Tensor, group: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
        u = x.shape[0]
        if group < 1 or u % group:
            raise ValueError(f"{u} dummy inputs do not split into targets of {group}")
        # sweep 1: forward
        ins: list = []            # per layer: what the later sweeps need from the forward
        shapes: list[torch.Size] = []
        a = x
        for layer in chain:
            shapes.append(a.shape)
            if isinstance(layer, Conv):
                cols = _unfold(a, layer)
                z = torch.matmul(flat[layer.weight], cols)
                if layer.bias is not None:
                    z = z + params[layer.bias][:, None]
                h, w = a.shape[-2:]
                ho = (h + 2 * layer.padding[0] - layer.kernel[0]) // layer.stride[0] + 1
                wo = (w + 2 * layer.padding[1] - layer.kernel[1]) // layer.stride[1] + 1
                ins.append(cols)
                a = z.view(u, -1, ho, wo)
            elif isinstance(layer, Activation):
                a = _activate(layer.kind, a)
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
        deltas: list = [None] * n_layers    # the delta each layer received (at its output)
        slopes: list = [None] * n_layers    # s'(z) of each activation
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
                slopes[i] = _act_slope(layer.kind, rec)
                delta = delta * slopes[i]
            else:
                dz = delta.flatten(2)
                grads[layer.weight] = torch.bmm(dz, rec.mT)
                if layer.bias is not None:
                    grads[layer.bias] = dz.sum(2)
                if i > 0:
                    h, w = shapes[i][-2:]
                    pad = [(size + 2 * p - k) % s for size, p, k, s in
                           zip((h, w), layer.padding, layer.kernel, layer.stride)]
                    delta = F.conv_transpose2d(delta, params[layer.weight], stride=layer.stride,
                                               padding=layer.padding, output_padding=pad)

        g_flat = torch.cat([grads[n].reshape(u, -1) for n in names], 1)
        if group > 1:  # a target's gradient is the mean over its batch of ``group`` examples
            g_flat = g_flat.view(u // group, group, -1).mean(1)
        entry = OBJECTIVES.get(objective)
        if entry.squared_distance:
            loss, gbar_flat = _adjoint_l2(g_flat, observed, observed != 0 if entry.support else None)
        else:
            leaf = g_flat.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = matching_loss([leaf], [observed], objective)
                (gbar_flat,) = torch.autograd.grad(loss.sum(), leaf)
            loss = loss.detach()
        if group > 1:  # d loss / d g_example = (d loss / d g_target) / group, for each example
            gbar_flat = (gbar_flat / group).repeat_interleave(group, 0)
        gbar = dict(zip(names, gbar_flat.split(sizes, 1)))

        # sweep 3a: adjoint of sweep 2, from the first layer to the output
        fadj: list = [None] * n_layers      # adjoint of each layer's output (forward)
        cols_bar: list = [None] * n_layers  # adjoint of a convolution's unfolded input
        in_bar: list = [None] * n_layers    # adjoint of a linear layer's input from G_W
        dbar: Tensor | None = None          # adjoint of the delta a layer passed down
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
                gw = gbar[layer.weight].reshape(u, *params[layer.weight].shape)
                out_bar = torch.bmm(gw, rec[:, :, None]).squeeze(-1)
                if layer.bias is not None:
                    out_bar = out_bar + gbar[layer.bias]
                if dbar is not None:
                    out_bar = out_bar + dbar @ flat_t[layer.weight]
                in_bar[i] = torch.bmm(delta[:, None, :], gw).squeeze(1)
                dbar = out_bar
            elif isinstance(layer, Flatten):
                dbar = None if dbar is None else dbar.reshape(delta.shape)
            elif dbar is not None:
                curv = _act_curvature(layer.kind, rec)
                if curv is not None:
                    fadj[i] = dbar * delta * curv
                dbar = dbar * slopes[i]
        assert dbar is not None  # the chain ends with a linear layer
        # the output: delta = softmax(o) - target
        out_adj = prob * (dbar - (prob * dbar).sum(-1, keepdim=True))
        y_bar = -target * (dbar - (target * dbar).sum(-1, keepdim=True)) if soft else None
        fadj[-1] = out_adj if fadj[-1] is None else fadj[-1] + out_adj

        # sweep 3b: back-propagation of the collected adjoints through the forward sweep
        x_bar = torch.zeros_like(x)
        for i in range(n_layers - 1, -1, -1):
            layer, ob = chain[i], fadj[i]
            if isinstance(layer, Conv):
                cb = cols_bar[i]
                if ob is not None:
                    cb = cb + torch.matmul(flat_t[layer.weight], ob.flatten(2))
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
                ib = ob * (slopes[i] if slopes[i] is not None else _act_slope(layer.kind, ins[i]))
            if i == 0:
                if ib is not None:
                    x_bar = ib.reshape(x.shape)
            elif ib is not None:
                fadj[i - 1] = ib if fadj[i - 1] is None else fadj[i - 1] + ib
        return loss, x_bar, y_bar

    return f


def flatten_observed(observed: list[Tensor]) -> Tensor:
    """Per-parameter observed gradients ``[U, ...]`` -> one ``[U, P]`` tensor (``names`` order)."""
    return torch.cat([o.reshape(o.shape[0], -1) for o in observed], 1)
