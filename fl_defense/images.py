"""Images in memory and image folders.

:class:`ImageDataset` holds a labelled image set as ``float32 [N, C, H, W]`` in ``[0, 1]``
with ``int64`` labels; :func:`load_image_folder` reads a folder of PNG/JPEG files into one.

Resizing (everywhere): the shorter side is scaled to ``image_size`` with antialiased
bilinear interpolation and the centre is cropped square -- the ``Resize`` +
``CenterCrop`` pipeline of the iDLG reference code (Zhao et al., 2020).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fl_defense.errors import check_int

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_LABEL_IN_STEM = re.compile(r"_(\d+)$")


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image set held in memory.

    Attributes
    ----------
    images : float32 ndarray ``[N, C, H, W]``, values in ``[0, 1]``, square (``H == W``).
    labels : int64 ndarray ``[N]``, each in ``0..num_classes-1`` or ``-1`` (unknown).
    num_classes : number of classes (0 when every label is unknown).
    name : a short name (a :data:`DATASET_NAMES` entry, or ``folder:<dir>``).
    class_names : one name per class, or empty.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
            raise ValueError(f"images must be a float32 array [N, C, H, W]; got "
                             f"{type(x).__name__} {getattr(x, 'dtype', '')} "
                             f"shape {getattr(x, 'shape', '')}")
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"images must be square; got H x W = {x.shape[2]} x {x.shape[3]}")
        if x.size and not (float(x.min()) >= 0.0 and float(x.max()) <= 1.0):
            raise ValueError(f"image values must lie in [0, 1]; got range "
                             f"[{float(x.min())}, {float(x.max())}]")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"labels must be an int64 array of shape ({x.shape[0]},); got "
                             f"{getattr(y, 'dtype', type(y).__name__)} shape "
                             f"{getattr(y, 'shape', '')}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0; got {self.num_classes!r}")
        if y.size and (int(y.min()) < -1 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in -1..{self.num_classes - 1}; got range "
                             f"[{int(y.min())}, {int(y.max())}]")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}")

    @property
    def in_channels(self) -> int:
        """Number of colour channels ``C``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length ``H == W`` in pixels."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def pil_to_uint8(img: PILImage.Image, image_size: int, channels: int) -> np.ndarray:
    """``uint8 [C, S, S]``: shorter side scaled to ``S`` (antialiased bilinear), centre crop."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    if img.mode.startswith("I;16") or img.mode in ("I", "F"):  # 16-bit / 32-bit grey
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8))
    img = img.convert("L" if channels == 1 else "RGB")
    img = F.center_crop(F.resize(img, [image_size]), [image_size, image_size])
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def to_float(images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32, copy=True)


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Float ``[N, C, H, W]`` -> ``[N, C, size, size]`` (shorter side + centre crop)."""
    if images.shape[2] == size and images.shape[3] == size:
        return images
    import torch
    from torchvision.transforms.v2 import functional as F

    t = F.resize(torch.from_numpy(images), [size], antialias=True)
    t = F.center_crop(t, [size, size])
    return np.clip(t.numpy(), 0.0, 1.0).astype(np.float32, copy=False)


def load_image_folder(path: str | os.PathLike[str], *, image_size: int,
                      channels: int) -> tuple[ImageDataset, list[str]]:
    """Load every PNG/JPEG file directly in ``path`` (sorted by file name).

    Each image (grey, colour, palette or 16-bit; any size) is converted to ``channels``
    (1: ITU-R 601 luma via Pillow's ``"L"``; 3: RGB, alpha dropped), its shorter side
    scaled to ``image_size`` and its centre cropped square.  The label is ``<int>`` when
    the file's stem ends in ``_<int>`` (``cat_3.png`` -> 3), else ``-1`` (unknown);
    ``num_classes`` is the largest label + 1 (0 when all are unknown).  Other files are
    ignored.  Returns the data set and the file names, in the same order.
    """
    from PIL import Image, UnidentifiedImageError

    check_int("image_size", image_size, 1)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    images = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    labels = np.full(len(files), -1, dtype=np.int64)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as img:
                images[i] = pil_to_uint8(img, image_size, channels)
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image {p}: {exc}") from exc
        m = _LABEL_IN_STEM.search(p.stem)
        if m:
            labels[i] = int(m.group(1))
    num_classes = int(labels.max()) + 1 if labels.max() >= 0 else 0
    ds = ImageDataset(to_float(images), labels, num_classes, f"folder:{folder.name}")
    return ds, [p.name for p in files]
