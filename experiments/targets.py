"""Images the attack commands attack, and the decoy pool they are scored against.

Splits
------
The published leak numbers are measured on the **evaluation split**: a data set's train
split, the images the clients hold (the run's partitions draw from it).  The attack's
constants (label hypotheses, screening, restarts, priors) are chosen on the **tuning
split**: the data set's test split, public images that no client trains on, attacked with
``run_sim.py attack --split tuning``; a tuning image is never its own decoy (the pool
leaves the attacked images out).  The two splits are disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl_defense.config import ConfigError
from fl_defense.protocol import SeedStream

SPLITS = ("evaluation", "tuning")


@dataclass
class TargetImages:
    """Images to attack: ``images`` ``[n, C, H, W]``, ``labels`` ``[n]``, their ``names``, the
    number of classes, for the tuning split their positions in the test split
    (``test_positions``, what the decoy pool leaves out), ``known`` ``[n]``: whether an
    image's label is its own (``False``: drawn at random for a file without one), and the
    classes' names (``class_names``, empty where the source has none)."""

    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    num_classes: int
    test_positions: np.ndarray | None = None
    known: np.ndarray | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.known is None:
            self.known = np.ones(len(self.labels), dtype=bool)

    @property
    def decoy_labels(self) -> np.ndarray:
        """The labels that pick each image's candidate decoys (-1 where unknown)."""
        return np.where(self.known, self.labels, -1)


def dataset_targets(name: str, n: int, seed: int, data_dir: str = "", shuffle: bool = False,
                    split: str = "evaluation") -> TargetImages:
    """``n`` images of a data set's evaluation (train) or tuning (test) split, chosen with ``seed``.

    In index order by default; ``shuffle`` puts them in a seeded random order instead (the
    embedded splits are stored class by class, so consecutive images playing one client
    would otherwise mostly share a label)."""
    from fl_defense.datasets import load_dataset

    if split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    train, test = load_dataset(name, data_dir=data_dir or None, seed=seed)
    source = train if split == "evaluation" else test
    if not 1 <= n <= len(source.labels):
        raise ConfigError(f"--n must be in [1, {len(source.labels)}] for the {split} split of {name}, got {n}")
    rng = np.random.default_rng([seed, SeedStream.TARGETS])
    idx = np.sort(rng.choice(len(source.labels), size=n, replace=False))
    if shuffle:
        idx = idx[rng.permutation(n)]
    where = "train" if split == "evaluation" else "test"
    return TargetImages(source.images[idx], source.labels[idx], [f"{name}[{where} {i}]" for i in idx],
                        source.num_classes, idx if split == "tuning" else None, class_names=source.class_names)


def folder_targets(folder: Path, n: int | None, image_size: int | None, seed: int) -> TargetImages:
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
    images, known = ds.images, ~unknown
    if n is not None:
        images, labels, names, known = images[:n], labels[:n], names[:n], known[:n]
    return TargetImages(images, labels, list(names), num_classes, known=known, class_names=ds.class_names)


def decoy_pool(dataset: str | None, decoys: str | None, cfg, targets: TargetImages, size: int):
    """The decoy pool of an attack command: the folder ``decoys`` when given (used as given),
    else the data set's test split (without the attacked images of the tuning split), else
    ``None`` (no decoys: the identification criterion is off, and the command says so)."""
    from fl_defense.decoys import NO_DECOYS, pool_for_dataset, pool_from_folder

    if decoys == NO_DECOYS:
        return None
    shape = targets.images.shape
    if decoys:
        return pool_from_folder(decoys, int(shape[-1]), int(shape[1]))
    if dataset:
        return pool_for_dataset(dataset, cfg.data_dir, cfg.seed, size, targets.test_positions)
    return None
