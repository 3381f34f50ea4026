"""The torchvision data sets of :mod:`fl_defense.datasets` (``mnist``, ``cifar10``, ``lfw``):
decoding their files, and naming the files at fault when they are missing, truncated or
corrupt (:class:`DatasetUnavailable`).

torchvision checks what it downloads by md5, but takes files that are already there as
they are: an uncompressed MNIST IDX file cut short makes it fail deep in a reshape, and a
truncated archive offline only says "not found".  The loaders here check the files first
(IDX sizes against their headers, archives and pickles against torchvision's md5s) and
say which file is bad.
"""

from __future__ import annotations

import functools
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fl_defense.images import pil_to_uint8

MNIST_CLASS_NAMES = ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
                     "6 - six", "7 - seven", "8 - eight", "9 - nine")
LFW_IMAGE_SET = "funneled"


class DatasetUnavailable(FileNotFoundError):
    """A data set's files are absent from ``data_dir`` (or truncated / corrupt) and
    cannot be downloaded.

    The message names the folder and the files to put there (or the files at fault).
    """


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


def _download_error(exc: BaseException) -> bool:
    return isinstance(exc, (RuntimeError, OSError, urllib.error.URLError))


def _idx_problem(path: Path) -> str | None:
    """Why an uncompressed MNIST IDX file is unusable (too short, not IDX, or its size
    disagrees with its header: truncated), or ``None``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or not 1 <= head[3] <= 4:
                return "is not an IDX file (bad magic number)"
            dims = fh.read(4 * head[3])
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if len(dims) < 4 * head[3]:
        return "is truncated (its IDX header is incomplete)"
    expected = 4 + len(dims) + int(np.prod([int.from_bytes(dims[i:i + 4], "big")
                                             for i in range(0, len(dims), 4)]))
    size = path.stat().st_size
    if size != expected:
        return f"is truncated or corrupt ({size} bytes where its IDX header says {expected})"
    return None


def _mnist_problems(raw: Path, archives: bool) -> list[str]:
    """The MNIST files in ``raw`` that are there but unusable: uncompressed IDX files
    whose size disagrees with their header, and (``archives``) ``.gz`` archives whose
    md5 is not torchvision's."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    out = []
    for archive, md5 in MNIST.resources:
        plain = raw / archive.removesuffix(".gz")
        if plain.exists():
            why = _idx_problem(plain)
            if why:
                out.append(f"{plain} {why}")
        elif archives and (raw / archive).exists() and not check_integrity(str(raw / archive), md5):
            out.append(f"{raw / archive} is truncated or corrupt (md5 is not {md5})")
    return out


@functools.lru_cache(maxsize=4)
def _mnist(root: str, download: bool) -> _Source:
    from torchvision.datasets import MNIST

    raw = Path(root) / "MNIST" / "raw"
    bad = _mnist_problems(raw, archives=False)  # torchvision would take these as present
    if bad:
        raise DatasetUnavailable(f"MNIST in {raw} is unusable: {'; '.join(bad)}. Delete the file "
                                 f"(torchvision downloads it again) or replace it.")
    parts = []
    for train in (True, False):
        try:
            ds = MNIST(root, train=train, download=download)
        except Exception as exc:
            if not _download_error(exc):
                raise
            bad = _mnist_problems(raw, archives=True)
            if bad:
                raise DatasetUnavailable(
                    f"MNIST in {raw} is unusable: {'; '.join(bad)} ({exc}). Delete or replace "
                    f"the file (the originals are at https://ossci-datasets.s3.amazonaws.com/mnist/).") from exc
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


def _cifar10_problems(root: Path) -> list[str]:
    """The CIFAR-10 files under ``root`` that are there but whose md5 is not torchvision's
    (a truncated download, a damaged copy)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = root / CIFAR10.base_folder
    expected = [(root / CIFAR10.filename, CIFAR10.tgz_md5)]
    expected += [(folder / f, md5) for f, md5 in (*CIFAR10.train_list, *CIFAR10.test_list)]
    expected.append((folder / CIFAR10.meta["filename"], CIFAR10.meta["md5"]))
    return [f"{p} is truncated or corrupt (md5 is not {md5})"
            for p, md5 in expected if p.exists() and not check_integrity(str(p), md5)]


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
            bad = _cifar10_problems(Path(root))
            if bad:
                raise DatasetUnavailable(
                    f"CIFAR-10 in {root} is unusable: {'; '.join(bad)} ({exc}). Delete or replace the "
                    f"file (the original is {CIFAR10.url}, md5 {CIFAR10.tgz_md5}).") from exc
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
