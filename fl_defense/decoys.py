"""The public decoy pool of the identification criterion: images of the same kind as the
private ones that no client trains on.

A reconstruction identifies the private image it is matched to when it is closer to that
image than to every decoy of the pool, and closer to it than every decoy is
(:mod:`fl_defense.scoring`), the idea of the distance-to-closest-record tests of
synthetic-data privacy evaluation: an attack that only recovers what public images of the
class look like is not credited with a leak.

Which decoys a reconstruction is compared with
----------------------------------------------
By default **every decoy of the pool**.  A reconstruction that holds nothing of its
private image (a blank, the class mean) beats P decoys drawn from the same distribution as
the private image with probability about 1/(P+1): the pool's size sets the criterion's
false-positive floor.  Restricted to the decoys of the image's label (``match_labels``),
the pools of the embedded faces and colour images hold 10-50 decoys a label and that floor
is 2-5% (``benchmarks/null_floor.py`` prints both); every decoy keeps it near 1% or below
on all three kinds, and a decoy of another label is never closer to a faithful
reconstruction than its own private image is.  With ``match_labels`` a reconstruction is
compared with the decoys of its image's label and the unlabelled ones (every decoy when the
label is unknown or none qualifies).

Where the pool comes from (:func:`pool_for_dataset`, :func:`pool_from_folder`):

* a registered data set: its **test split**, which no client trains on (the clients hold
  partitions of the train split); at most ``size`` images (default
  :data:`DEFAULT_POOL_SIZE`), a seeded, class-stratified choice when the split is larger.
  For a data set whose entry says horizontal flips are images of the same kind (faces,
  photographs: :attr:`fl_defense.datasets.DatasetEntry.flips`) the mirror of every chosen
  decoy joins the pool too, with its label;
* a folder of image files (``--decoys DIR``): used as given (its size printed), labels from
  ``*_<label>`` file names, unknown (``-1``) otherwise.

``exclude`` takes test-split positions out of the pool: the attack commands' tuning split
attacks test-split images, and an image is never its own decoy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fl_defense.errors import ConfigError
from fl_defense.metrics import ImageSet

__all__ = ["DecoyPool", "DEFAULT_POOL_SIZE", "pool_for_dataset", "pool_from_folder", "NO_DECOYS"]

DEFAULT_POOL_SIZE = 1000
#: The config value (key ``decoys``) that turns the identification criterion off.
NO_DECOYS = "none"


@dataclass(frozen=True, eq=False)
class DecoyPool:
    """Public images ``[P, C, H, W]`` in [0, 1] with their labels (``-1``: unknown).

    Attributes
    ----------
    images : the decoys, prepared for batched SSIM (:class:`fl_defense.metrics.ImageSet`).
    labels : int64 ``[P]``.
    source : what the pool is, in words (recorded with every result scored against it).
    spec : how to build it again (``{"dataset": ..., ...}`` or ``{"folder": ...}``), for
        ``run_sim.py rescore``.
    match_labels : compare a reconstruction with the decoys of its image's label only (see
        the module docstring; default: with every decoy).
    """

    images: ImageSet
    labels: np.ndarray
    source: str
    spec: dict
    match_labels: bool = False
    _nearest: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def candidates(self, label: int) -> np.ndarray:
        """Positions of the decoys a reconstruction of an image labelled ``label`` is compared
        with: every decoy, or with ``match_labels`` those of the same label and those without
        one (every decoy when ``label`` is unknown (< 0) or when no decoy qualifies)."""
        if label < 0 or not self.match_labels:
            return np.arange(len(self))
        keep = np.flatnonzero((self.labels == label) | (self.labels < 0))
        return keep if keep.size else np.arange(len(self))

    def _subset(self, label: int) -> ImageSet:
        idx = self.candidates(int(label))
        if idx.size == len(self):
            return self.images
        st = self.images.stats
        return ImageSet(type(st)(st.images[idx], st.mean[idx], st.var[idx]))

    def best(self, recon: np.ndarray, label: int) -> float:
        """The highest brightness-adjusted SSIM of ``recon`` to a candidate decoy (the
        reconstruction adjusted to each decoy; :func:`fl_defense.metrics.ssim_adjusted_many`,
        one batched computation)."""
        from fl_defense.metrics import ssim_adjusted_many

        return float(ssim_adjusted_many(self._subset(label), recon).max())

    def nearest(self, private: np.ndarray, label: int) -> float:
        """The highest brightness-adjusted SSIM of a candidate decoy to the private image
        (each decoy adjusted to it; :func:`fl_defense.metrics.ssim_adjusted_to_many`): how
        close the nearest public look-alike comes to the image."""
        from fl_defense.metrics import ssim_adjusted_to_many

        key = (np.ascontiguousarray(private, dtype=np.float32).tobytes(), int(label) if self.match_labels else -1)
        if key not in self._nearest:  # it depends on the image alone: every reconstruction of it reuses it
            self._nearest[key] = float(ssim_adjusted_to_many(private, self._subset(label)).max())
        return self._nearest[key]

    def prepare(self, privates: np.ndarray, labels: np.ndarray) -> None:
        """Compute :meth:`nearest` of every image of ``privates`` ``[N, C, H, W]`` (labelled
        ``labels`` ``[N]``) now, so that scoring them later reads it back: a caller runs
        this in a thread while it does other work (the batched SSIM releases the GIL)."""
        for private, label in zip(privates, labels):
            self.nearest(private, int(label))


def _stratified_choice(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` positions drawn without replacement, each class in proportion (seeded, sorted)."""
    if size >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 0xDEC0])
    classes, counts = np.unique(labels, return_counts=True)
    want = np.floor(counts / counts.sum() * size).astype(int)
    for i in np.argsort(-(counts / counts.sum() * size - want))[: size - want.sum()]:
        want[i] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, want)]
    return np.sort(np.concatenate(picks))


def pool_for_dataset(name: str, data_dir: str = "", seed: int = 0, size: int = DEFAULT_POOL_SIZE,
                     exclude: np.ndarray | None = None, image_size: int | None = None,
                     match_labels: bool = False) -> DecoyPool:
    """The decoy pool of a data set: its test split (see the module docstring).

    Parameters
    ----------
    name, data_dir, seed : the data set as a run names it (the seed decides its split).
    size : the most distinct test images in the pool (before mirroring).
    exclude : test-split positions left out (the images a tuning attack targets).
    image_size : resize the decoys to this side (default: the data set's own).
    match_labels : see :class:`DecoyPool`.
    """
    from fl_defense.datasets import dataset_entry, load_dataset

    if size < 1:
        raise ConfigError(f"the decoy pool size must be >= 1, got {size}")
    _, test = load_dataset(name, data_dir=data_dir or None, seed=seed, image_size=image_size)
    keep = np.ones(len(test.labels), dtype=bool)
    if exclude is not None:
        keep[np.asarray(exclude, dtype=np.int64)] = False
    positions = np.flatnonzero(keep)
    chosen = positions[_stratified_choice(test.labels[positions], size, seed)]
    images, labels = test.images[chosen], test.labels[chosen]
    mirrored = dataset_entry(name).flips
    if mirrored:
        images = np.concatenate([images, images[..., ::-1]])
        labels = np.concatenate([labels, labels])
    what = f"{len(chosen)} test-split images of {name}" + (" and their mirror images" if mirrored else "")
    if match_labels:
        what += " (each compared with those of its label)"
    return DecoyPool(ImageSet.of(images, "decoys"), labels.astype(np.int64), what,
                     {"dataset": name, "data_dir": data_dir, "seed": seed, "size": size,
                      "image_size": image_size, "exclude": [] if exclude is None else [int(i) for i in exclude],
                      "match_labels": match_labels}, match_labels)


def pool_from_folder(folder: str | Path, image_size: int, channels: int) -> DecoyPool:
    """The decoy pool of a folder of image files, used as given (labels from ``*_<label>``
    names, else unknown); refused (:class:`ConfigError`, naming the folder or file) when it
    is missing, holds no image, or a file is bad."""
    from fl_defense.images import load_image_folder

    path = Path(folder).resolve()
    if not path.is_dir():
        raise ConfigError(f"--decoys {path}: no such folder")
    ds, _ = load_image_folder(path, image_size=image_size, channels=channels)
    return DecoyPool(ImageSet.of(ds.images, "decoys"), ds.labels.astype(np.int64),
                     f"{len(ds.labels)} images of the folder {path}",
                     {"folder": str(path), "image_size": image_size, "channels": channels})


def pool_from_spec(spec: dict) -> DecoyPool:
    """Build again the pool that ``DecoyPool.spec`` describes."""
    if "folder" in spec:
        return pool_from_folder(spec["folder"], spec["image_size"], spec["channels"])
    return pool_for_dataset(spec["dataset"], spec.get("data_dir", ""), spec.get("seed", 0),
                            spec.get("size", DEFAULT_POOL_SIZE),
                            np.asarray(spec["exclude"], dtype=np.int64) if spec.get("exclude") else None,
                            spec.get("image_size"), spec.get("match_labels", False))
