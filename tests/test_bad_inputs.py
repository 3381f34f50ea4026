"""Bad inputs refused before any work: exit code 2, a message that names the file (or key),
nothing written, no traceback.  Image folders (through ``attack --images`` and
``run --dataset folder:DIR``), torchvision archives, ``train --thresholds`` files and
``run --resume`` folders."""

from __future__ import annotations

import gzip
import json
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.cli import main

try:
    from tests import fakedata_torchvision as fake
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    import fakedata_torchvision as fake

ROOT = Path(__file__).resolve().parent.parent


def png_bytes(seed: int, mode: str = "L", size: int = 12) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def good_folder(folder: Path) -> Path:
    """8 labelled grey images, 4 of class 0 and 4 of class 1: a valid data set folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(8):
        (folder / f"img{i}_{i % 2}.png").write_bytes(png_bytes(i))
    return folder


def jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90)
    return buf.getvalue()


def _unreadable(folder: Path, monkeypatch) -> str:
    # the tests run as root, for whom chmod 000 changes nothing: make reading this file fail
    (folder / "locked_0.png").write_bytes(png_bytes(99))
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked_0.png":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return "locked_0.png"


def _bomb(folder: Path, monkeypatch) -> str:
    (folder / "huge_0.png").write_bytes(png_bytes(5, size=64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 > 2 x 1000: a "bomb"
    return "huge_0.png"


def _write(name: str, data: bytes):
    def build(folder: Path, monkeypatch) -> str:
        (folder / name).write_bytes(data)
        return name
    return build


def _classes(text: str, name: str | None = None, data: bytes | None = None):
    def build(folder: Path, monkeypatch) -> str:
        (folder / "classes.txt").write_text(text)
        if name:
            (folder / name).write_bytes(data)
        return name or "classes.txt"
    return build


def _symlink(folder: Path, monkeypatch) -> str:
    os.symlink(folder / "gone.png", folder / "link_0.png")
    return "link_0.png"


def _directory(folder: Path, monkeypatch) -> str:
    (folder / "dir_0.png").mkdir()
    return "dir_0.png"


# (id, builder, words the message must hold besides the entry's name)
BAD_FILES = [
    ("corrupt-png", _write("corrupt_0.png", png_bytes(1)[:16] + b"\x00garbage" * 20), ["not a readable image"]),
    ("zero-byte", _write("empty_1.png", b""), ["empty (0 bytes)"]),
    ("text-as-png", _write("notes_0.png", b"just some text, not an image\n"), ["not a readable image"]),
    ("text-as-jpg", _write("notes_1.jpg", b"hello"), ["not a readable image"]),
    ("truncated-png", _write("cut_1.png", png_bytes(2, size=64)[:200]), ["not a readable image"]),
    ("truncated-jpeg", _write("cut_0.jpeg", jpeg_bytes(3)[:300]), ["not a readable image"]),
    ("label-outside-classes", _classes("zero\none\n", "x_5.png", png_bytes(4)), ["label 5", "2 classes"]),
    ("empty-classes-file", _classes("\n\n"), ["names no class"]),
    ("duplicate-class-name", _classes("cat\ncat\n"), ["twice"]),
    ("dangling-symlink", _symlink, ["dangling symbolic link"]),
    ("directory-named-png", _directory, ["not a regular file"]),
    ("unreadable-file", _unreadable, ["cannot read", "Permission denied"]),
    ("decompression-bomb", _bomb, ["too large"]),
]


def check_refused(capsys, rc: int, words, out: Path | None) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert rc == 2, text
    assert captured.err.startswith("error: "), text
    assert "Traceback" not in text
    for word in words:
        assert word in text, (word, text)
    if out is not None:
        assert not out.exists(), "something was written"
    return text


@pytest.mark.parametrize("build,words", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_attack_images_refuses_bad_file(tmp_path, capsys, monkeypatch, build, words):
    folder = good_folder(tmp_path / "images")
    name = build(folder, monkeypatch)
    out = tmp_path / "out"
    rc = main(["attack", "--images", str(folder), "--out", str(out), "--max-iter", "1"])
    check_refused(capsys, rc, [name, *words], out)


@pytest.mark.parametrize("build,words", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_run_on_folder_dataset_refuses_bad_file(tmp_path, capsys, monkeypatch, build, words):
    folder = good_folder(tmp_path / "images")
    name = build(folder, monkeypatch)
    out = tmp_path / "out"
    rc = main(["--dataset", f"folder:{folder}", "--clients", "2", "--out", str(out)])
    check_refused(capsys, rc, [name, *words], out)


FOLDER_DATASETS = [  # what only a data set folder refuses (the attack infers missing labels)
    ("unlabelled-file", lambda f: (f / "nolabel.png").write_bytes(png_bytes(7)), ["nolabel.png", "no label"]),
    ("one-class", lambda f: [p.rename(f / p.name.replace("_1.png", "_0.png")) for p in f.glob("*_1.png")],
     ["1 class", "at least 2"]),
    ("no-test-split", lambda f: [p.unlink() for p in sorted(f.glob("*.png"))[2:]], ["test split"]),
    ("too-many-clients", None, ["partition", "impossible"]),
]


@pytest.mark.parametrize("build,words", [b[1:] for b in FOLDER_DATASETS], ids=[b[0] for b in FOLDER_DATASETS])
def test_folder_dataset_specific_refusals(tmp_path, capsys, build, words):
    folder = good_folder(tmp_path / "images")
    clients = "50" if build is None else "2"
    if build is not None:
        build(folder)
    out = tmp_path / "out"
    rc = main(["--dataset", f"folder:{folder}", "--clients", clients, "--out", str(out)])
    check_refused(capsys, rc, words, out)


@pytest.mark.parametrize("argv,words", [
    (["attack", "--images", "/no/such/folder"], ["/no/such/folder", "does not exist"]),
    (["--dataset", "folder:/no/such/folder"], ["/no/such/folder", "does not exist"]),
    (["--dataset", "folder:relative/dir"], ["folder:relative/dir", "absolute"]),
    (["--dataset", "folder:"], ["dataset", "absolute"]),
], ids=["attack-missing-folder", "run-missing-folder", "run-relative-folder", "run-empty-folder-name"])
def test_bad_folder_names(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    check_refused(capsys, main([*argv, "--out", str(out)]), words, out)


def test_folder_that_is_a_file_or_has_no_images(tmp_path, capsys):
    (tmp_path / "file.png").write_bytes(png_bytes(0))
    out = tmp_path / "out"
    check_refused(capsys, main(["attack", "--images", str(tmp_path / "file.png"), "--out", str(out)]),
                  ["file.png", "is not a folder"], out)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    check_refused(capsys, main(["attack", "--images", str(tmp_path / "empty"), "--out", str(out)]),
                  ["empty", "holds no"], out)


def test_mixed_channel_folder_is_converted_to_rgb(tmp_path):
    """The policy for a folder of grey and colour files: convert (grey replicated to RGB), not refuse."""
    from fl_defense.datasets import load_dataset
    from fl_defense.images import read_image_folder

    folder = good_folder(tmp_path / "images")
    (folder / "colour_1.png").write_bytes(png_bytes(11, "RGB"))
    (folder / "colour_0.png").write_bytes(png_bytes(12, "RGB"))
    content = read_image_folder(folder, image_size=8)
    assert content.images.shape == (10, 3, 8, 8)
    assert len(content.converted) == 8 and "colour_1.png" not in content.converted
    grey = content.names.index("img0_0.png")
    assert (content.images[grey, 0] == content.images[grey, 1]).all()
    assert (content.images[grey, 1] == content.images[grey, 2]).all()
    train, test = load_dataset(f"folder:{folder}")
    assert train.in_channels == 3 and train.num_classes == 2 and len(train) + len(test) == 10
    only_grey = read_image_folder(good_folder(tmp_path / "grey"), image_size=8)
    assert only_grey.images.shape[1] == 1 and only_grey.converted == ()


# ---------------------------------------------------------------- torchvision archives
def _mnist_gz(tmp_path, monkeypatch, cut: bool):
    from torchvision.datasets import MNIST

    fake.write_mnist(tmp_path, n_train=10, n_test=10, seed=3)
    raw = tmp_path / "MNIST" / "raw"
    for name in fake.MNIST_FILES:
        (raw / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes()))
        (raw / name).unlink()
    monkeypatch.setattr(MNIST, "resources", [(f"{n}.gz", fake.md5(raw / f"{n}.gz")) for n in fake.MNIST_FILES])
    victim = raw / "train-images-idx3-ubyte.gz"
    if cut:
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


def _mnist_idx(tmp_path, how: str):
    fake.write_mnist(tmp_path, n_train=10, n_test=10, seed=3)
    victim = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100] if how == "cut" else b"\x12\x34" + data[2:])
    return victim


def _cifar(tmp_path, monkeypatch, part: str):
    import shutil
    import tarfile

    from torchvision.datasets import CIFAR10

    _, md5s = fake.write_cifar10(tmp_path, n_per_batch=2, n_test=3, seed=4)
    fake.patch_md5s(monkeypatch, cifar10=md5s)
    if part == "batch":
        victim = tmp_path / CIFAR10.base_folder / "data_batch_3"
        victim.write_bytes(victim.read_bytes()[:50])
        return victim
    with tarfile.open(tmp_path / CIFAR10.filename, "w:gz") as tar:
        tar.add(tmp_path / CIFAR10.base_folder, arcname=CIFAR10.base_folder)
    shutil.rmtree(tmp_path / CIFAR10.base_folder)
    victim = tmp_path / CIFAR10.filename
    monkeypatch.setattr(CIFAR10, "tgz_md5", fake.md5(victim))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    return victim


ARCHIVES = [
    ("mnist-truncated-gz", "mnist", lambda t, m: _mnist_gz(t, m, cut=True), ["truncated or corrupt"]),
    ("mnist-truncated-idx", "mnist", lambda t, m: _mnist_idx(t, "cut"), ["truncated", "IDX header"]),
    ("mnist-not-idx", "mnist", lambda t, m: _mnist_idx(t, "magic"), ["not an IDX file"]),
    ("cifar10-truncated-tar-gz", "cifar10", lambda t, m: _cifar(t, m, "archive"), ["truncated or corrupt"]),
    ("cifar10-truncated-batch", "cifar10", lambda t, m: _cifar(t, m, "batch"), ["truncated or corrupt"]),
]


@pytest.mark.parametrize("dataset,build,words", [a[1:] for a in ARCHIVES], ids=[a[0] for a in ARCHIVES])
def test_truncated_torchvision_archive_is_named(tmp_path, capsys, monkeypatch, dataset, build, words):
    fake.forbid_downloads(monkeypatch)
    data = tmp_path / "data"
    data.mkdir()
    victim = build(data, monkeypatch)
    out = tmp_path / "out"
    rc = main(["--dataset", dataset, "--data-dir", str(data), "--out", str(out)])
    check_refused(capsys, rc, [str(victim), *words], out)


def test_intact_gz_archives_still_load(tmp_path, monkeypatch):
    from fl_defense.datasets import load_dataset

    fake.forbid_downloads(monkeypatch)
    _mnist_gz(tmp_path, monkeypatch, cut=False)
    train, _ = load_dataset("mnist", data_dir=tmp_path)
    assert len(train) == 10


# ---------------------------------------------------------------- thresholds files
HEADER = "dataset,defense,attacker,threshold,leak_rate\n"
THRESHOLDS = [
    ("missing-file", None, ["does not exist"]),
    ("directory", "DIR", ["is not a file"]),
    ("empty-file", "", ["is empty"]),
    ("whitespace-only", "\n  \n", ["is empty"]),
    ("header-only", HEADER, ["no rows"]),
    ("missing-threshold-column", "dataset,defense,attacker\nmnist-embedded,masking,naive\n", ["threshold"]),
    ("missing-two-columns", "defense,threshold\nmasking,0.3\n", ["dataset", "attacker"]),
    ("not-csv-binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["not a CSV file"]),
    ("not-utf8", "dataset,defense\n".encode() + b"\xff\xfe\xfa\n", ["not a CSV file"]),
    ("non-numeric", HEADER + "mnist-embedded,masking,naive,abc,0\n", ["line 2", "'abc'", "not a number"]),
    ("nan-threshold", HEADER + "mnist-embedded,masking,naive,nan,0\n", ["line 2", "finite"]),
    ("negative-noise", HEADER + "mnist-embedded,noising,naive,-0.1,0\n", ["line 2", "noising"]),
    ("masking-out-of-range", HEADER + "mnist-embedded,masking,naive,1.5,0\n", ["line 2", "1.5"]),
    ("unknown-defense", HEADER + "mnist-embedded,maskng,naive,0.3,0\n", ["line 2", "maskng", "masking"]),
    ("empty-defense", HEADER + "mnist-embedded,,naive,0.3,0\n", ["line 2", "defense is empty"]),
    ("ragged-row", HEADER + "mnist-embedded,masking,naive\n", ["line 2", "3 fields"]),
    ("bad-quoting", HEADER + 'mnist-embedded,"masking,naive,0.3,0\n', ["not a valid CSV"]),
    ("conflicting-rows", HEADER + "mnist-embedded,masking,naive,0.3,0\nmnist-embedded,masking,naive,0.5,0\n",
     ["line 3", "second threshold"]),
    ("bad-row-of-another-setting", HEADER + "mnist-embedded,masking,naive,0.3,0\ncifar10,pruning,aware,x,0\n",
     ["line 3", "'x'"]),
]


@pytest.mark.parametrize("content,words", [t[1:] for t in THRESHOLDS], ids=[t[0] for t in THRESHOLDS])
def test_train_refuses_bad_thresholds_file(tmp_path, capsys, content, words):
    path = tmp_path / "thresholds.csv"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    rc = main(["train", "--thresholds", str(path), "--out", str(out), "--rounds", "1"])
    check_refused(capsys, rc, [str(path), *words], out)


# a thresholds.csv as the sweep writes it (its required columns and more), with an empty
# threshold where no strength of the grid stopped the attacker
SWEEP_THRESHOLDS = """\
dataset,defense,attacker,threshold,leak_rate,ssim_mean,ssim_adjusted_mean,n,undefended_leak_rate,strongest_tested
mnist-embedded,clipping,aware,,,,,,1.0,1e-07
mnist-embedded,masking,aware,0.99,0.0,0.0896041803265605,0.10228266490241518,8,1.0,0.99
mnist-embedded,noising,aware,0.01,0.0,0.14521357498657705,0.16290791249038347,8,1.0,0.03
mnist-embedded,pruning,aware,0.99,0.0,0.11337147591363089,0.11561017860390896,8,1.0,0.99
mnist-embedded,clipping,naive,0.001,0.0,0.11676972295673561,0.129931914245162,8,1.0,1e-07
mnist-embedded,masking,naive,0.3,0.0,0.13682881891245527,0.15182840910238052,8,1.0,0.99
mnist-embedded,noising,naive,0.01,0.0,0.14521357498657705,0.16290791249038347,8,1.0,0.03
mnist-embedded,pruning,naive,0.9,0.0,0.0930080103202468,0.10660533420920815,8,1.0,0.99
"""


def test_the_sweeps_thresholds_file_is_read(tmp_path):
    """A sweep's thresholds.csv passes, an empty threshold (no strength stopped the
    attacker) is left out."""
    from experiments.thresholds import read_thresholds

    path = tmp_path / "thresholds.csv"
    path.write_text(SWEEP_THRESHOLDS)
    assert read_thresholds(path, "mnist-embedded", "naive") == {"clipping": 0.001, "masking": 0.3,
                                                                  "noising": 0.01, "pruning": 0.9}
    assert "clipping" not in read_thresholds(path, "mnist-embedded", "aware")


# ---------------------------------------------------------------- --resume folders
def _run_folder(tmp_path: Path) -> Path:
    """A run folder as a run leaves it after round 1 of 3 (config.json + checkpoint)."""
    from fl_defense.config import parse_run_config
    from fl_defense.task import get_weights, new_model
    from strategies.checkpoint import Checkpoint, recorded_config, save_checkpoint

    folder = tmp_path / "run"
    cfg = parse_run_config({"num-server-rounds": 3, "num-clients": 2, "out-dir": str(folder)})
    folder.mkdir()
    import json

    (folder / "config.json").write_text(json.dumps(recorded_config(cfg)))
    row = {"round": 1, "accuracy": 0.1}
    save_checkpoint(folder, Checkpoint(1, 3, get_weights(new_model(cfg)), recorded_config(cfg),
                                       {"0:RecordingStrategy": {"rows": [row]}}))
    (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.exists() else {}


RESUMES = [
    ("no-such-folder", lambda f: f.parent / "nothing", [], ["no such folder"]),
    ("no-config-json", lambda f: (f / "config.json").unlink() or f, [], ["no config.json"]),
    ("config-not-json", lambda f: (f / "config.json").write_text("{not json") and f, [], ["config.json", "unreadable"]),
    ("config-not-object", lambda f: (f / "config.json").write_text("[1, 2]") and f, [], ["not a JSON object"]),
    ("config-bad-value", lambda f: (f / "config.json").write_text('{"defense": "maskng:0.3"}') and f, [],
     ["config.json", "maskng"]),
    ("corrupt-checkpoint", lambda f: (f / "checkpoint.npz").write_bytes(b"PK\x03\x04 broken") and f, [],
     ["checkpoint.npz", "unreadable"]),
    ("truncated-checkpoint", lambda f: (f / "checkpoint.npz").write_bytes((f / "checkpoint.npz").read_bytes()[:300])
     and f, [], ["checkpoint.npz", "unreadable"]),
    ("checkpoint-of-another-config", lambda f: (f / "config.json").write_text(json.dumps(
        {**json.loads((f / "config.json").read_text()), "lr": 0.05})) and f, [], ["checkpoint.npz", "lr"]),
    ("flag-changes-config", lambda f: f, ["--defense", "masking:0.2", "--lr", "0.5"], ["refused", "defense", "lr"]),
    ("other-out", lambda f: f, ["--out", "/tmp/elsewhere"], ["refused", "out-dir"]),
    ("set-resume", lambda f: f, ["--set", "resume=true"], ["--resume DIR"]),
]


@pytest.mark.parametrize("build,extra,words", [r[1:] for r in RESUMES], ids=[r[0] for r in RESUMES])
def test_resume_refuses_bad_folder_or_flags(tmp_path, capsys, build, extra, words):
    folder = build(_run_folder(tmp_path))
    before = _snapshot(folder)
    rc = main(["--resume", str(folder), *extra])
    check_refused(capsys, rc, words, None)
    assert _snapshot(folder) == before  # nothing written


def test_run_sim_process_prints_no_traceback_for_a_corrupt_image(tmp_path):
    folder = good_folder(tmp_path / "images")
    (folder / "bad_0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    out = tmp_path / "out"
    for argv in (["attack", "--images", str(folder)], ["--dataset", f"folder:{folder}", "--clients", "2"]):
        proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), *argv, "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "bad_0.png" in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
        assert not out.exists()


def test_server_app_refuses_a_bad_folder_before_writing(tmp_path, caplog):
    """Through `flwr run` directly the ServerApp is the boundary: the same check, before
    config.json or anything else is written, one error line and status 2."""
    from types import SimpleNamespace

    from strategies.server_app import main as server_main

    folder = good_folder(tmp_path / "images")
    (folder / "bad_1.png").write_bytes(b"")
    out = tmp_path / "out"
    context = SimpleNamespace(run_config={"dataset": f"folder:{folder}", "num-clients": 2, "out-dir": str(out)},
                              run_id=1)
    with pytest.raises(SystemExit) as stop:
        server_main(None, context)
    assert stop.value.code == 2
    assert "bad_1.png is empty" in caplog.text
    assert not out.exists()
