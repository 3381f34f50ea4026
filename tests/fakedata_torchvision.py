"""Small fake copies of torchvision's on-disk data set formats, for offline tests.

Each writer produces the real layout and file formats that torchvision 0.29 reads:

* MNIST: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` in the IDX
  format (big-endian header: magic ``0x0000_08_0d`` with d the number of dimensions,
  then d uint32 sizes, then uint8 data).  torchvision's ``_check_exists`` only looks for
  the uncompressed files, so ``download=True`` downloads nothing once they exist.
* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``,
  pickled dicts (``data``: uint8 ``[n, 3072]`` as R, G, B planes of 32x32; ``labels``;
  ``label_names`` in the meta file).  torchvision checks every file's md5 against the
  real archive's, so :func:`patch_md5s` points those class attributes at the fake
  files' md5s (pytest's monkeypatch undoes it).
* LFW (people view): ``<root>/lfw-py/lfw_funneled/<Person>/<Person>_0001.jpg``,
  ``lfw-py/lfw-funneled.tgz`` (a tar of that folder), ``lfw-py/people.txt`` (number of
  folds, then per fold its number of people and ``Name<TAB>count`` lines) and
  ``lfw-py/lfw-names.txt`` (``Name<TAB>count`` per person).  torchvision md5-checks the
  archive and both text files; :func:`patch_md5s` again.

:func:`forbid_downloads` makes ``urllib.request.urlopen`` raise ``URLError``, as on an
offline machine.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I",
                                                                  *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """Write a fake MNIST; returns the uint8 images ``[n, 28, 28]`` and labels written."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


def write_cifar10(root: Path, n_per_batch: int, n_test: int,
                  seed: int) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Write a fake CIFAR-10; returns (arrays ``[n, 32, 32, 3]`` + labels, md5 per file)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
             "ship", "truck"]
    arrays: dict[str, list[Any]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    batches = [(f"data_batch_{i}", n_per_batch, "train") for i in range(1, 6)]
    batches.append(("test_batch", n_test, "test"))
    for fname, n, split in batches:
        hwc = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        entry = {"batch_label": fname, "labels": labels,
                 "data": hwc.transpose(0, 3, 1, 2).reshape(n, 3072),
                 "filenames": [f"img_{fname}_{i}.png" for i in range(n)]}
        with open(folder / fname, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        arrays[f"{split}_x"].append(hwc)
        arrays[f"{split}_y"].extend(labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": n_per_batch, "label_names": names,
                     "num_vis": 3072}, f, protocol=2)
    out = {"train_x": np.concatenate(arrays["train_x"]), "test_x": arrays["test_x"][0],
           "train_y": np.array(arrays["train_y"]), "test_y": np.array(arrays["test_y"])}
    md5s = {p.name: md5(p) for p in folder.iterdir()}
    return out, md5s


def write_lfw(root: Path, people: dict[str, tuple[int, tuple[int, int, int]]],
              folds: int = 2, side: int = 50) -> dict[str, str]:
    """Write a fake LFW (funneled, people view).

    ``people`` maps a name to (number of images, RGB colour); every image of a person is
    a flat square of that colour, so a test can tell whose image it is.  Returns the
    md5 of lfw-funneled.tgz, people.txt and lfw-names.txt.
    """
    base = root / "lfw-py"
    images_dir = base / "lfw_funneled"
    for name, (count, colour) in people.items():
        (images_dir / name).mkdir(parents=True)
        for k in range(1, count + 1):
            Image.new("RGB", (side, side), colour).save(
                images_dir / name / f"{name}_{k:04d}.jpg", quality=95)
    with tarfile.open(base / "lfw-funneled.tgz", "w:gz") as tar:
        tar.add(images_dir, arcname="lfw_funneled")
    names = sorted(people)
    fold_lists = [names[i::folds] for i in range(folds)]
    lines = [str(folds)]
    for fold in fold_lists:
        lines.append(str(len(fold)))
        lines.extend(f"{n}\t{people[n][0]}" for n in fold)
    (base / "people.txt").write_text("\n".join(lines) + "\n")
    (base / "lfw-names.txt").write_text("".join(f"{n}\t{people[n][0]}\n" for n in names))
    return {f: md5(base / f) for f in ("lfw-funneled.tgz", "people.txt", "lfw-names.txt")}


def patch_md5s(monkeypatch: Any, cifar10: dict[str, str] | None = None,
               lfw: dict[str, str] | None = None) -> None:
    """Point torchvision's expected md5s at the fake files' (undone by monkeypatch)."""
    from torchvision.datasets import CIFAR10, LFWPeople

    if cifar10 is not None:
        monkeypatch.setattr(CIFAR10, "train_list",
                            [[f, cifar10[f]] for f, _ in CIFAR10.train_list])
        monkeypatch.setattr(CIFAR10, "test_list",
                            [[f, cifar10[f]] for f, _ in CIFAR10.test_list])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": cifar10["batches.meta"]})
    if lfw is not None:
        file_dict = dict(LFWPeople.file_dict)
        folder, archive, _ = file_dict["funneled"]
        file_dict["funneled"] = (folder, archive, lfw[archive])
        monkeypatch.setattr(LFWPeople, "file_dict", file_dict)
        monkeypatch.setattr(LFWPeople, "checksums", {**LFWPeople.checksums,
                                                     "people.txt": lfw["people.txt"],
                                                     "lfw-names.txt": lfw["lfw-names.txt"]})


def forbid_downloads(monkeypatch: Any) -> list[str]:
    """Make ``urllib.request.urlopen`` raise URLError, as on an offline machine.

    Every torchvision download goes through it, while torchvision's own logic (md5
    checks of files already present, unpacking archives) still runs.  Returns the list
    of URLs that were tried, filled in as it happens.
    """
    tried: list[str] = []

    def offline(request: Any, *args: Any, **kwargs: Any) -> None:
        tried.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return tried


def write_md5_site(folder: Path, cifar10: dict[str, str]) -> Path:
    """Write ``folder/sitecustomize.py``, which gives torchvision's ``CIFAR10`` the fake
    files' md5s in every Python process that has ``folder`` on its ``PYTHONPATH`` (a Flower
    simulation's processes and its Ray workers: monkeypatch reaches only this one).  The
    md5s are set when ``torchvision.datasets.cifar`` is first imported; other processes
    import nothing more than before.  Returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(f'''"""Fake CIFAR-10 md5s for torchvision (tests/fakedata_torchvision.py)."""
import sys

MD5S = {dict(cifar10)!r}
MODULE = "torchvision.datasets.cifar"


class _FakeCifarMd5s:
    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            cls = module.CIFAR10
            cls.train_list = [[f, MD5S[f]] for f, _ in cls.train_list]
            cls.test_list = [[f, MD5S[f]] for f, _ in cls.test_list]
            cls.meta = {{**cls.meta, "md5": MD5S["batches.meta"]}}

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _FakeCifarMd5s())
''')
    return folder
