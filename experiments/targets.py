"""Images the attack commands attack: a data set's test split or a folder of image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fl_defense.config import ConfigError
from fl_defense.protocol import SeedStream


def dataset_targets(name: str, n: int, seed: int, data_dir: str = "", shuffle: bool = False):
    """``n`` images of a data set's test split, chosen with ``seed``: (images, labels, names, num_classes).

    In index order by default; ``shuffle`` puts them in a seeded random order instead (the
    embedded splits are stored class by class, so consecutive images playing one client
    would otherwise mostly share a label)."""
    from fl_defense.datasets import load_dataset

    _, test = load_dataset(name, data_dir=data_dir or None, seed=seed)
    if not 1 <= n <= len(test.labels):
        raise ConfigError(f"--n must be in [1, {len(test.labels)}] for {name}, got {n}")
    rng = np.random.default_rng([seed, SeedStream.TARGETS])
    idx = np.sort(rng.choice(len(test.labels), size=n, replace=False))
    if shuffle:
        idx = idx[rng.permutation(n)]
    return test.images[idx], test.labels[idx], [f"{name}[{i}]" for i in idx], test.num_classes


def folder_targets(folder: Path, n: int | None, image_size: int | None, seed: int):
    """Images of a folder (label from ``*_<label>`` names, else a seeded label the attack must
    infer).  Every file is validated by :func:`fl_defense.images.read_image_folder` (a bad one
    is refused, named); grey if every file is grey, else RGB.  Classes: a ``classes.txt``'s
    count when the folder has one, else ``max(10, largest label + 1)``."""
    from fl_defense.images import folder_class_names, load_image_folder

    if n is not None and n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    ds, names = load_image_folder(folder, image_size=image_size, channels=None)
    num_classes = ds.num_classes if folder_class_names(folder) else max(10, ds.num_classes)
    labels = ds.labels.copy()
    unknown = labels < 0
    labels[unknown] = np.random.default_rng([seed, SeedStream.FOLDER_LABELS]).integers(
        0, num_classes, size=int(unknown.sum()))
    if n is not None:
        ds_images, labels, names = ds.images[:n], labels[:n], names[:n]
    else:
        ds_images = ds.images
    return ds_images, labels, names, num_classes
