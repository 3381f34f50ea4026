"""Real Flower simulations (``flwr run`` on Ray) of SecAgg+, the Gaussian mechanism and
Flower's DP wrappers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fl_defense.privacy import gaussian_epsilon

from conftest import leftover_processes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("mark_processes")


def run_sim(out: Path, *argv: str) -> list[dict]:
    # the hook attacks in the ServerApp's process: these runs check what it sees, not where it runs
    proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "--out", str(out), "--attack-workers", "0", *argv],
                          capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not leftover_processes()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def exact_round_one(overrides: dict, clients) -> tuple[float, float]:
    """Test loss and accuracy after round 1 with the exact mean of the clients' uploads,
    computed in this process by the clients' own code path."""
    from fl_defense.config import parse_run_config
    from fl_defense.models import state_kinds
    from fl_defense.task import (client_indices, defended_payload, evaluate_model, get_weights, load_data,
                                 new_model, payload_to_weights, select_device, set_weights)

    cfg = parse_run_config(overrides)
    train, test = load_data(cfg)
    model = new_model(cfg, train)
    kinds, global_w = state_kinds(model), get_weights(model)
    uploads = []
    for cid in clients:
        idx = client_indices(cfg, cid)
        payload, _, _ = defended_payload(cfg, model, kinds, global_w, train.images[idx], train.labels[idx],
                                         cid, 1, select_device())
        uploads.append(payload_to_weights(global_w, payload, kinds))
    mean = [np.mean([np.asarray(u[i], np.float64) for u in uploads], axis=0).astype(global_w[i].dtype)
            for i in range(len(global_w))]
    set_weights(model, mean)
    return evaluate_model(model, test.images, test.labels, select_device())


@pytest.mark.slow
def test_secagg_two_rounds_three_clients(tmp_path):
    """Client 2 fails in fit every round: SecAgg+ removes its masks with the others' shares."""
    out = tmp_path / "secagg"
    rows = run_sim(out, "--secagg", "--rounds", "2", "--clients", "3", "--set", "local-steps=1",
                   "--set", "attack-max-iter=200", "--set", "fail-clients=\"2\"")
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["clients_ok"] == 2 and row["clients_failed"] == 1 and row["clients_rejected"] == 0
        assert 0.0 <= row["accuracy"] <= 1.0
        # the hook attacked the one aggregate the server received: both live clients' 4 images
        assert row["attack_threat_model"] == "secagg-aggregate" and row["attack_targets"] == 1
        assert row["attack_images"] == 8 and 0 <= row["attack_leaked"] <= 8 and "attack_ssim_mean" in row
    log = (out / "flower.log").read_text()
    assert log.count("Secure aggregation completed") == 2
    assert json.loads((out / "config.json").read_text())["secure-aggregation"] is True
    # what SecAgg+ aggregated is the mean of the uploads, up to its quantisation
    loss, acc = exact_round_one({"num-clients": 3, "local-steps": 1}, clients=[0, 1])
    assert rows[0]["loss"] == pytest.approx(loss, rel=1e-4)
    assert abs(rows[0]["accuracy"] - acc) <= 0.002


@pytest.mark.slow
def test_dp_gaussian_run_writes_epsilon_every_round(tmp_path):
    out = tmp_path / "dp"
    rows = run_sim(out, "--defense", "dp-gaussian:1.5", "--set", "dp-clip=0.5", "--set", "dp-delta=1e-6",
                   "--rounds", "2", "--clients", "2", "--set", "local-steps=2", "--set", "dropout-rate=0.5",
                   "--attack-every", "0")
    for row in rows:
        # the worst client's releases: the clients that uploaded in this and earlier rounds
        assert row["epsilon"] == pytest.approx(gaussian_epsilon(1.5, row["dp_releases"], 1e-6))
        assert row["epsilon_rdp"] > row["epsilon"] and row["epsilon_scope"] == "local" and row["dp_delta"] == 1e-6
    # seed 0: both clients upload in round 1; client 0 drops out of round 2, client 1 uploads twice
    assert [r["clients_dropped"] for r in rows] == [0, 1] and [r["dp_releases"] for r in rows] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["epsilon"] == rows[-1]["epsilon"]


@pytest.mark.slow
def test_client_side_dp_wrapper_clips_on_the_client_and_the_hook_sees_it(tmp_path):
    out = tmp_path / "wrapper"
    rows = run_sim(out, "--rounds", "1", "--clients", "2", "--set", "local-steps=1", "--set", "batch-size=1",
                   "--set", "dp-strategy=client-side-fixed-clipping", "--set", "dp-clip=0.05",
                   "--set", "dp-noise-multiplier=0.5", "--attack-every", "1", "--set", "attack-clients=2",
                   "--set", "attack-max-iter=20", "--attacker", "aware")
    row = rows[0]
    assert row["attack_targets"] == 2 and row["attack_objective"] == "cosine"
    assert row["epsilon_scope"] == "central" and row["epsilon"] == pytest.approx(gaussian_epsilon(0.5, 1, 1e-5))
    log = (out / "flower.log").read_text()
    assert "fixedclipping_mod: parameters are clipped by value: 0.0500" in log
    assert "central DP noise with 0.0125 stdev added" in log  # Z C / n = 0.5 x 0.05 / 2
