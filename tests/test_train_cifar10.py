"""``train --dataset cifar10 --data-dir DIR`` runs the grid on CIFAR-10 files in torchvision's
own format (a small fake copy, tests/fakedata_torchvision.py), through real Flower
simulations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests import fakedata_torchvision as fake
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    import fakedata_torchvision as fake

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_grid_on_a_cifar10_file_in_torchvision_format(tmp_path):
    import uuid

    from conftest import processes_with_marker

    _, md5s = fake.write_cifar10(tmp_path / "data", n_per_batch=8, n_test=20, seed=3)
    site = fake.write_md5_site(tmp_path / "site", cifar10=md5s)  # torchvision md5-checks every file
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "FL_DEFENSE_TEST_MARK": marker}
    out = tmp_path / "grid"
    proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "train", "--out", str(out),
                           "--dataset", "cifar10", "--data-dir", "data",  # relative to the working directory
                           "--partitions", "iid", "--aggregations", "mean", "--clients", "2", "--rounds", "2",
                           "--attack-every", "2", "--attack-max-iter", "20", "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cell = out / "cells" / "iid-mean-none"
    assert json.loads((cell / "summary.json").read_text())["status"] == "completed"
    config = json.loads((cell / "config.json").read_text())
    assert config["dataset"] == "cifar10" and config["data-dir"] == str(tmp_path / "data")
    rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(r["clients_ok"] == 2 for r in rows)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert "attack_ssim_mean" not in rows[0] and rows[1]["attack_images"] == 4  # the hook, on round 2
    assert (cell / "attack" / "round-002.png").exists()
    assert "| none |" in proc.stdout and (out / "final_accuracy.csv").exists()
    assert not processes_with_marker(marker)
