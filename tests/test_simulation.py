"""Real Flower simulations (``flwr run`` on Ray) through the launcher and ``run_sim.py``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.launcher import SimulationFailed, run_simulation

from conftest import leftover_processes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("mark_processes")


@pytest.mark.slow
def test_run_sim_two_rounds_median_noniid(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "--out", str(out), "--rounds", "2",
                           "--clients", "3", "--aggregation", "median", "--partition", "dirichlet:0.5",
                           "--defense", "masking:0.3", "--set", "local-steps=5", "--attack-every", "2",
                           "--set", "attack-max-iter=30"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert {"round", "accuracy", "loss", "seconds", "clients_ok", "clients_failed"} <= set(row)
        assert row["clients_ok"] == 3 and row["clients_failed"] == 0
        assert 0.0 <= row["accuracy"] <= 1.0
    # the hook attacked in round 2 only, and said under which threat model
    assert "attack_ssim_mean" not in rows[0]
    assert {"attack_ssim_mean", "attack_ssim_max", "attack_ssim_adjusted_mean", "attack_label_acc",
            "attack_leaked", "attack_seconds"} <= set(rows[1])
    assert rows[1]["attack_threat_model"] == "simulated" and rows[1]["attacker"] == "naive"
    assert rows[1]["attack_images"] == 4  # one client, its 4 images of the round, each scored once
    assert (out / "attack" / "round-002.png").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["aggregation"] == "median" and config["defense"] == "masking:0.3"
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    # the per-round table was printed
    assert "round" in proc.stdout and "done in" in proc.stdout
    assert not leftover_processes()


@pytest.mark.slow
def test_failed_run_is_reported_and_cleaned_up(tmp_path):
    """`flwr run --stream` exits 0 even when the run fails; the launcher must not."""
    project = tmp_path / "broken"
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", ".flwr", "runs", "__pycache__",
                                                                 ".hypothesis", ".pytest_cache"))
    server = project / "strategies" / "server_app.py"
    server.write_text(server.read_text().replace(
        "    cfg = checked_config(context.run_config)\n",
        "    cfg = checked_config(context.run_config)\n    raise RuntimeError('broken on purpose')\n", 1))
    assert "broken on purpose" in server.read_text()
    with pytest.raises(SimulationFailed, match="did not complete"):
        run_simulation({"out-dir": str(tmp_path / "out"), "num-server-rounds": 1, "num-clients": 2},
                       project_dir=project, timeout=300)
    assert not (tmp_path / "out" / "summary.json").exists()
    assert not leftover_processes()


@pytest.mark.slow
def test_flwr_run_directly_rejects_bad_config(tmp_path):
    """Through `flwr run . --run-config`: an unknown key is refused by Flower itself; a bad
    value stops our ServerApp before round 1 with our message, and nothing is recorded."""
    import tempfile

    from experiments.launcher import flwr_run_command, private_superlink

    home = Path(tempfile.mkdtemp(prefix="bad-", dir=tmp_path))
    out = tmp_path / "out"
    log_path = tmp_path / "flower.log"
    with open(log_path, "ab") as log, private_superlink(home, log) as env:
        env["COLUMNS"] = "300"  # Flower's error box truncates long lines
        typo = subprocess.run(flwr_run_command(ROOT, 2, ["--run-config", "num-server-round=3"]), env=env,
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        # Flower refuses a key that pyproject.toml does not list (without naming it)
        assert typo.returncode != 0 and "Invalid run configuration" in typo.stderr
        bad = subprocess.run(flwr_run_command(ROOT, 2, ["--run-config",
                                                        f"defense='maskng:0.4' out-dir='{out}'"]),
                             env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    text = bad.stdout + bad.stderr + log_path.read_text()
    assert "unknown defense 'maskng'" in text
    assert not (out / "metrics.jsonl").exists() and not (out / "summary.json").exists()
    assert not leftover_processes()
