"""The attack command and the threshold sweep, on tiny settings (files, resume, errors)."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.cli import main
from experiments.sweep_cells import thresholds_from_cells

ROOT = Path(__file__).resolve().parent.parent


def _cell(defense, strength, leaked, n=64, leaked_paper=None, **extra):
    from experiments.sweep_cells import cell_counts

    paper = leaked if leaked_paper is None else leaked_paper
    rows = [{"failed": False, "leaked": i < leaked, "leaked_paper": i < paper} for i in range(n)]
    return {"dataset": "d", "attacker": "naive", "defense": defense, "strength": strength, "ssim_mean": 0.1,
            "ssim_adjusted_mean": 0.2, "decoys": "pool", **cell_counts(rows), **extra}


def test_thresholds_need_no_leak_at_the_strength_and_at_every_stronger_one():
    cells = [_cell("none", 0.0, 64),
             *[_cell("masking", s, k, leaked_paper=kp) for s, k, kp in
               [(0.1, 64, 64), (0.5, 16, 40), (0.7, 0, 9), (0.9, 0, 0)]],
             *[_cell("pruning", s, k) for s, k in [(0.1, 20), (0.5, 0), (0.7, 1), (0.9, 0)]],
             *[_cell("clipping", s, 64) for s in (1.0, 0.1)]]
    grids = {"masking": [0.1, 0.5, 0.7, 0.9], "pruning": [0.1, 0.5, 0.7, 0.9], "clipping": [1.0, 0.1]}
    rows = {r["defense"]: r for r in thresholds_from_cells(cells, grids, 0.0)}
    m = rows["masking"]
    assert (m["threshold"], m["threshold_paper"]) == (0.7, 0.9) and m["undefended_leak_rate"] == 1.0
    assert m["n"] == 64 and m["leaked"] == 0 and m["failed"] == 0
    assert m["leak_upper95"] == pytest.approx(1 - 0.025 ** (1 / 64))
    assert rows["pruning"]["threshold"] == 0.9            # 0.5 leaks nothing, but 0.7 leaks again
    assert rows["clipping"]["threshold"] is None and rows["clipping"]["strongest_tested"] == 0.1
    rows = {r["defense"]: r for r in thresholds_from_cells(cells, grids, 0.25)}
    assert rows["masking"]["threshold"] == 0.5
    # a folder's cells carry the run's setting (its dataset among the keys): the row keeps the folder
    setting = {"dataset": "mnist-embedded", "lr": 0.3, "model": "tanhcnn"}
    folder = [{**c, "dataset": "folder-colour", "setting": setting} for c in cells]
    rows = thresholds_from_cells(folder, grids, 0.0)
    assert {r["dataset"] for r in rows} == {"folder-colour"} and all(r["lr"] == 0.3 for r in rows)


def test_attack_command_on_an_image_folder(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    from fl_defense.datasets import load_dataset

    train, _ = load_dataset("mnist-embedded")
    Image.fromarray((train.images[0, 0] * 255).astype(np.uint8)).resize((40, 40)).save(folder / f"digit_{train.labels[0]}.png")
    Image.fromarray((rng.random((20, 30, 3)) * 255).astype(np.uint8)).save(folder / "noise.jpg")
    out = tmp_path / "out"
    rc = main(["attack", "--images", str(folder), "--image-size", "32", "--out", str(out), "--max-iter", "40",
               "--restarts", "0"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "attack.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [f"digit_{train.labels[0]}.png", "noise.jpg"]
    for r in rows:
        assert {"image", "label", "label_pred", "ssim", "ssim_adjusted", "psnr", "mse", "seconds"} <= set(r)
    assert rows[0]["label"] == int(train.labels[0])
    assert (out / "grid.png").exists()
    printed = capsys.readouterr().out
    assert "leaked" in printed
    assert "by label" not in printed   # noise.jpg's label is drawn, not its own: no counts per label


@pytest.mark.parametrize("argv,words", [
    (["attack", "--dataset", "mnist-embedded", "--defense", "maskng:0.5"], ["maskng"]),
    (["attack", "--dataset", "mnist-embedded", "--defense", "masking:1.5"], ["1.5"]),
    (["attack", "--images", "/nonexistent/folder"], ["/nonexistent/folder"]),
    (["attack", "--images", "/tmp", "--split", "tuning"], ["--split"]),
    (["attack", "--decoys", "/nonexistent/decoys"], ["/nonexistent/decoys"]),
    (["attack", "--dataset", "mnist-embedded", "--n", "0"], ["--n", "0"]),
    (["sweep", "--defenses", "masking,shuffling", "--images-per-client", "1"], ["shuffling"]),
    (["sweep", "--datasets", "mnist-embeded", "--images-per-client", "1"], ["mnist-embeded"]),
    (["sweep", "--grid-masking", "0.5,1.5", "--images-per-client", "1"], ["1.5"]),
    (["sweep", "--attackers", "naive,clever", "--images-per-client", "1"], ["clever"]),
    (["train", "--thresholds", "/nonexistent/thresholds.csv"], ["/nonexistent/thresholds.csv"]),
    (["train", "--partitions", "iid,noniid"], ["noniid"]),
    (["train", "--defenses", "masking:0.5", "--later-sweep", "/nonexistent/sweep"], ["--later-sweep", "/nonexistent/sweep"]),
])
def test_bad_experiment_input_fails_before_work(tmp_path, capsys, argv, words):
    rc = main([*argv, "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "o" / "cells").exists()


def test_sweep_writes_tables_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    argv = [sys.executable, str(ROOT / "run_sim.py"), "sweep", "--out", str(out), "--n", "2", "--images-per-client", "1", "--local-steps", "1", "--batch-size", "1",
            "--defenses", "masking,clipping", "--grid-masking", "0.3,0.5,0.99", "--grid-clipping", "1,1e-7",
            "--attackers", "naive", "--max-iter", "20", "--restarts", "0", "--quiet"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "x 2 images, 4 task(s)" in first.stdout  # none; masking 0.3,0.5 and 0.99; clipping
    for name in ("thresholds.csv", "thresholds.md", "cells.csv", "leak_vs_strength.png", "config.json"):
        assert (out / name).exists(), name
    rows = list(csv.DictReader((out / "thresholds.csv").read_text().splitlines()))
    assert {r["defense"] for r in rows} == {"masking", "clipping"}
    assert {"dataset", "defense", "attacker", "threshold", "n", "leaked", "failed", "leak_upper95", "threshold_paper",
            "leak_upper95_paper", "decoys"} <= set(rows[0])
    cells = list(csv.DictReader((out / "cells.csv").read_text().splitlines()))
    assert len(cells) == 6 and all(c["n"] == "2" and c["leak_upper95"] for c in cells)
    assert "decoys: 1000 test-split images of mnist-embedded" in first.stdout
    assert (out / "cells" / "mnist-embedded" / "naive" / "masking=0.5.npz").exists()
    cell = out / "cells" / "mnist-embedded" / "naive" / "masking=0.5.json"
    stamp = cell.stat().st_mtime_ns
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "6 cells (6 already done, 0 the same attack as the naive one)" in again.stdout
    assert cell.stat().st_mtime_ns == stamp  # a finished cell is never recomputed
    assert not list(out.rglob("*.tmp"))


def test_a_sweep_cell_is_the_same_whichever_cells_ran_beside_it(tmp_path):
    """One cell (masking 0.3) swept beside another strength and swept alone: the same
    reconstructions and the same rows (wall time aside), so that the task size and a
    resume do not change a cell's numbers."""

    def sweep(out, grid):
        argv = [sys.executable, str(ROOT / "run_sim.py"), "sweep", "--out", str(out), "--n", "8",
                "--defenses", "masking", "--grid-masking", grid, "--attackers", "naive", "--max-iter", "30",
                "--restarts", "0", "--workers", "0", "--quiet"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        cell = out / "cells" / "mnist-embedded" / "naive"
        rows = [json.loads(line) for line in (cell / "masking=0.3.jsonl").read_text().splitlines()]
        with np.load(cell / "masking=0.3.npz", allow_pickle=False) as rec:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in rows], rec["reconstructions"].copy()

    beside_rows, beside = sweep(tmp_path / "beside", "0.1,0.3")
    alone_rows, alone = sweep(tmp_path / "alone", "0.3")
    assert len(alone_rows) == 8 and alone.shape == (8, 1, 28, 28)
    assert np.array_equal(beside, alone)
    assert beside_rows == alone_rows


@pytest.mark.slow
def test_train_grid_side_by_side_writes_tables_and_resumes(tmp_path):
    """Two cells of the grid as two Flower simulations at once (--workers 2): both finish,
    the tables and figures are written, and a second call finds both done."""
    out = tmp_path / "grid"
    argv = [sys.executable, str(ROOT / "run_sim.py"), "train", "--out", str(out), "--defenses", "masking:0.5",
            "--partitions", "iid", "--aggregations", "mean", "--rounds", "2", "--clients", "3",
            "--attack-every", "0", "--workers", "2", "--quiet"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = list(csv.DictReader((out / "final_accuracy.csv").read_text().splitlines()))
    assert sorted(r["defense"] for r in rows) == ["masking", "none"]
    for name in ("curves.png", "frontier.png", "config.json"):
        assert (out / name).exists(), name
    for cell in ("iid-mean-none", "iid-mean-masking=0.5"):
        assert len((out / "cells" / cell / "metrics.jsonl").read_text().splitlines()) == 2
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "2 cells (2 already done)" in again.stdout


@pytest.mark.slow
def test_train_stops_on_ctrl_c(tmp_path):
    """Ctrl-C stops the running cells at their next poll (long before they would finish: 5000
    rounds), never starts the waiting ones and exits 130."""
    out = tmp_path / "grid"
    argv = [sys.executable, str(ROOT / "run_sim.py"), "train", "--out", str(out), "--defenses", "masking:0.5",
            "--partitions", "iid,dirichlet:0.5", "--aggregations", "mean", "--rounds", "5000", "--clients", "3",
            "--attack-every", "0", "--workers", "2", "--quiet"]
    # a shell that starts the tests in the background ignores SIGINT in them, and the child would
    # inherit that: it gets the default disposition back, as a command typed at a terminal has
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not any(p.read_text().strip() for p in out.glob("cells/*/metrics.jsonl")):
            assert proc.poll() is None and time.monotonic() < deadline, "no cell wrote a round in 300 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        # each running cell notices at its next poll; stopping its processes may take the launcher's graces
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:   # the test failed first: stop the run and its cells (SIGTERM cleans up)
            proc.terminate()
            proc.communicate(timeout=180)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted" in stderr
    assert not any((d / "summary.json").exists() for d in (out / "cells").iterdir())
    assert len(list((out / "cells").iterdir())) == 2  # the two waiting cells never started


def test_sweep_from_a_checkpoint_attacks_the_rounds_after_it(tmp_path):
    """``sweep --checkpoint RUN`` makes the uploads from the checkpoint's global model, in the
    rounds after it, records it in the setting, and refuses a checkpoint of another model."""
    from fl_defense.config import parse_run_config
    from fl_defense.task import get_weights, new_model
    from strategies.checkpoint import Checkpoint, save_checkpoint

    cfg = parse_run_config({})
    weights = [w * 0.5 for w in get_weights(new_model(cfg))]
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, Checkpoint(round=40, num_rounds=100, weights=weights, config={}, state={}))
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--n", "4", "--defenses", "masking", "--grid-masking", "0.5",
            "--attackers", "naive", "--max-iter", "10", "--restarts", "0", "--workers", "0", "--quiet",
            "--checkpoint", str(run)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "cells" / "mnist-embedded" / "naive" / "masking=0.5.jsonl")
            .read_text().splitlines()]
    assert {r["round"] for r in rows} == {41}
    assert json.loads((out / "config.json").read_text())["setting"]["checkpoint"] == str(run.resolve())
    assert main([a for a in argv if a not in ("--checkpoint", str(run))]) == 2  # another starting point
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other, Checkpoint(round=1, num_rounds=2, weights=weights[:-1], config={}, state={}))
    assert main([*argv[:-1], str(other), "--out", str(tmp_path / "s2")]) == 2
