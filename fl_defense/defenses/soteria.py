"""``soteria:p``: Soteria, perturbing the data representation (Sun et al., 2021).

The representation r is the input of the model's last linear layer (``[N, F]`` for the N
images a client trained on).  For every feature f Soteria scores how much of the input the
feature carries,

    score_f = sum_n || d r_nf / d x_n ||_2 / (|r_nf| + 0.1),

at the global weights the client started from, on the images it trained on, and zeroes the
columns of the last linear layer's weight update that belong to the features whose score is
below the p-th quantile (``numpy.percentile`` at 100 p): those with the largest
``|r_f| / ||d r_f / d x||``, which reveal the most about the input for the least change.
The rest of the update is uploaded as computed.  p in [0, 1) is the fraction of features
pruned (0: no feature).

Adaptations (ours): the original scores ``||d r_f / d x|| / (r_f + 0.1)`` for ReLU features
and one gradient; with signed (tanh) features we divide by ``|r_f| + 0.1``, and the columns
of the whole round's update (several local steps) are zeroed with the mask computed at the
round's starting weights, per image in eval mode (:func:`feature_scores`).  The scores need
the client's images and model, so the defense takes a
:class:`~fl_defense.defenses.base.DefenseContext`.

The zeroed columns arrive as exact zeros, so the aware attacker leaves them out
(``l2-support``).

Reference: Sun, J., Li, A., Wang, B., Yang, H., Li, H. & Chen, Y. (2021). Soteria: Provable
Defense against Privacy Leakage in Federated Learning from Representation Perspective. CVPR.
"""

from __future__ import annotations

import numpy as np

from fl_defense.defenses.base import Defense, cast

SHIFT = 0.1  # the denominator's shift, as in the reference implementation


def last_linear(model):
    """``(name, module)`` of the model's last ``nn.Linear``; ``ValueError`` when it has none."""
    from torch import nn

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError("soteria: the model has no linear layer whose input is a representation")
    return found[-1]


def feature_scores(model, images: np.ndarray) -> np.ndarray:
    """``score_f`` of every feature of the last linear layer's input (see the module docstring).

    Per image, the Jacobian of the representation with respect to the image is computed in
    forward mode (``torch.func.jacfwd``, one pass per input pixel, vectorised over the
    images), with the model in eval mode (BatchNorm reads its running statistics, so that one
    image's representation depends on that image alone); the model's mode is restored."""
    import torch
    from torch.func import jacfwd, vmap

    _, layer = last_linear(model)

    def representation(x):
        seen = []
        handle = layer.register_forward_hook(lambda mod, inputs, output: seen.append(inputs[0]))
        try:
            model(x[None])
        finally:
            handle.remove()
        return seen[0].flatten()

    was_training = model.training
    model.eval()
    try:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        with torch.no_grad():
            r = torch.stack([representation(xi) for xi in x])            # [N, F]
        jac = vmap(jacfwd(representation))(x)                             # [N, F, C, H, W]
    finally:
        model.train(was_training)
    norms = jac.flatten(2).norm(dim=2)                                    # [N, F]
    return (norms / (r.abs() + SHIFT)).sum(0).detach().double().numpy()


def soteria(arrays, kinds, p, flags, rng, *, context):
    out = [a.copy() for a in arrays]
    if p == 0:
        return out
    name, _ = last_linear(context.model)
    key = f"{name}.weight" if name else "weight"
    i = list(context.state_keys).index(key)
    scores = feature_scores(context.model, context.images)
    if arrays[i].shape[-1] != scores.size:
        raise ValueError(f"soteria: {key} has {arrays[i].shape[-1]} input features but the representation "
                         f"has {scores.size}")
    pruned = scores < np.percentile(scores, 100.0 * p)
    out[i] = cast(np.where(pruned[None, :], 0.0, arrays[i].astype(np.float64)), arrays[i])
    return out


DEFENSE = Defense("soteria", soteria, "zero the last linear layer's update columns of the fraction p of "
                  "representation features that reveal the most of the input (Soteria)",
                  "p", 0.0, True, 1.0, False, example="soteria:0.5", needs_context=True,
                  aware_objective="l2-support", grid=(0.1, 0.3, 0.5, 0.7, 0.9, 0.99),
                  reference="Sun et al. (2021), CVPR")
