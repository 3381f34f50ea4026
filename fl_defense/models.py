"""Models used by fl-defense.

* :class:`LeNet` -- the LeNet of the DLG paper (Zhu et al., 2019, "Deep Leakage from
  Gradients"), also used by iDLG (Zhao et al., 2020): three 5x5 convolutions with 12
  channels, sigmoid activations (twice differentiable, which gradient matching needs)
  and one linear layer.  ``dlg_init=True`` draws every weight and bias from
  uniform(-0.5, 0.5), the initialisation the attack papers use.
* :class:`BNCNN` -- a small ReLU CNN with BatchNorm, used to study how defenses
  interact with BatchNorm parameters and running statistics.
* :class:`ResNet8` -- the CIFAR ResNet of He et al. (2016, Sec. 4.2) with one basic block
  per stage (6n+2 = 8 layers, n = 1), widths 16/32/64, BatchNorm and ReLU, global average
  pooling and one linear layer: a model users recognise for CIFAR-size work (about 78,000
  parameters).  Its BatchNorm layers are trained in train mode, as every client trains.
* :class:`TanhCNN` -- two 5x5 stride-2 convolutions (16 and 32 channels) with tanh and one
  linear layer, PyTorch's default init.  Smooth like the DLG LeNet (gradient matching
  needs second derivatives; ReLU's are zero) but it trains with plain SGD in about a
  quarter of the steps (measured centrally on the embedded MNIST split, batch 40: 94% test
  accuracy after 500 steps at lr 0.1-0.3, where the DLG LeNet needs about 1,750 at lr 0.3
  and does not train at lr 1).

Models take images in [0, 1] (no normalisation layer), shaped ``[N, C, H, W]``.

The registry
------------
:data:`MODELS` maps a name to a :class:`ModelEntry`: its builder (which applies the
model's initialisation), whether it has BatchNorm (its uploads then carry running
statistics, which some defenses and the DP mechanisms treat apart), its initialisation in
words, and which image sizes it accepts.  Config checks, help texts and the attack read it;
a third-party package adds models through the entry-point group ``fl_defense.models``
(:mod:`fl_defense.registry`).
"""

from __future__ import annotations

import torch
from dataclasses import dataclass
from typing import Callable

from torch import nn

from fl_defense.registry import Registry

KINDS = ("weight", "bn_affine", "bn_stat")
"""The kind of every ``state_dict`` entry (:func:`state_kinds`): what the defenses and the
client update distinguish."""

UPDATE_KINDS = frozenset({"weight", "bn_affine"})
"""Kinds whose payload entries hold an update ``local - global`` (trainable parameters);
the others (BatchNorm buffers) are uploaded as values."""


class LeNet(nn.Module):
    """The DLG paper's LeNet: conv(12, 5x5, stride 2) x2, conv(12, 5x5, stride 1), linear."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
                 dlg_init: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            nn.Sigmoid(),
        )
        side = (image_size + 1) // 2
        side = (side + 1) // 2
        self.fc = nn.Linear(12 * side * side, num_classes)
        if dlg_init:
            for p in self.parameters():
                nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.fc(out.flatten(1))


class BNCNN(nn.Module):
    """A small ReLU CNN with BatchNorm after each convolution (two conv blocks, one linear)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.fc = nn.Linear(32 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class TanhCNN(nn.Module):
    """conv(16, 5x5, stride 2) - tanh - conv(32, 5x5, stride 2) - tanh - linear."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=5, padding=2, stride=2),
            nn.Tanh(),
            nn.Conv2d(16, 32, kernel_size=5, padding=2, stride=2),
            nn.Tanh(),
        )
        side = ((image_size + 1) // 2 + 1) // 2
        self.fc = nn.Linear(32 * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and ReLU, and a shortcut (a 1x1 convolution with
    BatchNorm where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """He et al.'s CIFAR ResNet with n = 1: conv(16) - BN - ReLU, three stages of one basic
    block (16, 32, 64 channels; strides 1, 2, 2), global average pooling, linear."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.stages = nn.Sequential(_BasicBlock(width, width, 1), _BasicBlock(width, 2 * width, 2),
                                    _BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        return self.fc(out.mean(dim=(2, 3)))


def _dlg_lenet(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return LeNet(in_channels, image_size, num_classes, dlg_init=True)


@dataclass(frozen=True)
class ModelEntry:
    """A registry entry: everything the code asks about one model.

    Attributes
    ----------
    name : the name users write.
    builder : ``builder(in_channels, image_size, num_classes) -> nn.Module``, initialised
        (the caller seeds torch first).
    summary : one line for help texts and ``run_sim.py models``.
    batchnorm : the model has BatchNorm layers (its uploads carry running statistics).
    init : the initialisation, in words.
    min_size : the smallest image side it accepts.
    size_multiple : the image side must be a multiple of this.
    """

    name: str
    builder: Callable[[int, int, int], nn.Module]
    summary: str
    batchnorm: bool = False
    init: str = "PyTorch's default"
    min_size: int = 8
    size_multiple: int = 1

    def check_size(self, image_size: int) -> None:
        """``ValueError`` naming the model and the size when it cannot take ``image_size``."""
        if image_size < self.min_size or image_size % self.size_multiple:
            rule = f">= {self.min_size}" + (f" and a multiple of {self.size_multiple}" if self.size_multiple > 1
                                            else "")
            raise ValueError(f"model {self.name!r} needs an image side {rule}, got {image_size}")

    def build(self, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
        self.check_size(image_size)
        return self.builder(in_channels, image_size, num_classes)


MODELS: Registry[ModelEntry] = Registry("model", ModelEntry, (
    ModelEntry("tanhcnn", TanhCNN, "two 5x5 stride-2 convolutions (16, 32 channels) with tanh, one linear layer"),
    ModelEntry("lenet", _dlg_lenet, "the DLG paper's LeNet: three 5x5 convolutions (12 channels), sigmoid, "
               "one linear layer", init="uniform(-0.5, 0.5) for every weight and bias (the DLG init)"),
    ModelEntry("bncnn", BNCNN, "two 3x3 convolutions with BatchNorm, ReLU and max-pooling, one linear layer",
               batchnorm=True, size_multiple=4),
    ModelEntry("resnet8", ResNet8, "the CIFAR ResNet with one basic block a stage (8 layers; 16/32/64 channels), "
               "BatchNorm, ReLU, global average pooling, one linear layer", batchnorm=True),
), entry_point_group="fl_defense.models")
"""name -> :class:`ModelEntry` (built-ins, then plug-ins)."""


def build_model(name: str, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build a registered model by name, initialised (seed torch first); ``ValueError`` naming
    an unknown name (with the nearest) or a size the model cannot take."""
    return MODELS.get(name).build(in_channels, image_size, num_classes)


def has_batchnorm(name: str) -> bool:
    """Whether the registered model ``name`` has BatchNorm layers."""
    return MODELS.get(name).batchnorm


def state_kinds(model: nn.Module) -> list[str]:
    """Kind of every entry of ``model.state_dict()``, in order.

    ``"weight"``: a trainable parameter outside BatchNorm; ``"bn_affine"``: a BatchNorm
    weight (gamma) or bias (beta); ``"bn_stat"``: a BatchNorm buffer (``running_mean``,
    ``running_var``, ``num_batches_tracked``).  Defenses use these kinds.
    """
    bn_modules = {name for name, m in model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    param_names = {name for name, _ in model.named_parameters()}
    kinds = []
    for key in model.state_dict():
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        if owner in bn_modules:
            kinds.append("bn_affine" if key in param_names else "bn_stat")
        else:
            kinds.append("weight")
    return kinds
