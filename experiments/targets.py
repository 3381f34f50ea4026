"""Images the attack commands attack: a data set's test split or a folder of image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_defense.config import ConfigError
from fl_defense.protocol import SeedStream


def dataset_targets(name: str, n: int, seed: int, data_dir: str = ""):
    """``n`` images of a data set's test split, chosen with ``seed``: (images, labels, names, num_classes)."""
    from fl_defense.datasets import load_dataset

    _, test = load_dataset(name, data_dir=data_dir or None, seed=seed)
    if not 1 <= n <= len(test.labels):
        raise ConfigError(f"--n must be in [1, {len(test.labels)}] for {name}, got {n}")
    idx = np.sort(np.random.default_rng([seed, SeedStream.TARGETS]).choice(len(test.labels), size=n, replace=False))
    return test.images[idx], test.labels[idx], [f"{name}[{i}]" for i in idx], test.num_classes


def folder_targets(folder: Path, n: int | None, image_size: int | None, seed: int):
    """Images of a folder (label from ``*_<label>`` names, else a seeded label the attack must
    infer).  With ``image_size`` None the files keep their own size, which must be square and
    the same for all of them (else :class:`ConfigError` naming the first file that differs)."""
    from PIL import Image

    from fl_defense.images import IMAGE_SUFFIXES, load_image_folder

    if not folder.is_dir():
        raise FileNotFoundError(f"--images folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if image_size is None and files:
        sizes = {}
        for path in files:
            with Image.open(path) as img:
                sizes[path] = img.size
        w, h = sizes[files[0]]
        odd = next((p for p in files if sizes[p] != (w, h) or sizes[p][0] != sizes[p][1]), None)
        if odd is not None:
            raise ConfigError(f"images in {folder} must all be square and of one size to keep their own size "
                              f"({files[0].name} is {w}x{h}, {odd.name} is {sizes[odd][0]}x{sizes[odd][1]}); "
                              f"give --image-size to resize them")
        image_size = w
    grey = all(Image.open(p).mode in ("1", "L", "LA", "I", "I;16", "F") for p in files) if files else True
    ds, names = load_image_folder(folder, image_size=image_size, channels=1 if grey else 3)
    num_classes = max(10, ds.num_classes)
    labels = ds.labels.copy()
    unknown = labels < 0
    labels[unknown] = np.random.default_rng([seed, SeedStream.FOLDER_LABELS]).integers(
        0, num_classes, size=int(unknown.sum()))
    if n is not None:
        if n < 1:
            raise ConfigError(f"--n must be >= 1, got {n}")
        ds_images, labels, names = ds.images[:n], labels[:n], names[:n]
    else:
        ds_images = ds.images
    return ds_images, labels, names, num_classes
