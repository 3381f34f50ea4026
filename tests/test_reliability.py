"""Faults, Byzantine clients and reproducibility."""

import json

import numpy as np
import pytest
import torch

from clients.faults import InjectedFault, byzantine_payload
from clients.numpy_client import DefendedClient
from fl_defense.config import parse_run_config
from experiments.launcher import run_simulation
from fl_defense.task import evaluate_model, get_weights, load_data, new_model, set_weights
from strategies.aggregation import aggregate_arrays

TIMING_KEYS = {"seconds", "attack_seconds"}


def in_process_accuracy(aggregation: str, byzantine: int, rounds: int = 5) -> float:
    """A small federation driven in-process: real clients, our aggregation, no engine."""
    cfg = parse_run_config({"num-clients": 10, "byzantine-clients": byzantine, "byzantine-mode": "scaled",
                            "aggregation": aggregation, "local-steps": 10, "model": "lenet", "lr": 0.1,
                            "batch-size": 32, "images-per-client": 0})
    model = new_model(cfg)
    weights = get_weights(model)
    _, test = load_data(cfg)
    clients = [DefendedClient(cfg, c) for c in range(cfg.num_clients)]
    for r in range(1, rounds + 1):
        weights = aggregate_arrays([c.fit(weights, {"server-round": r})[0] for c in clients], aggregation)
    set_weights(model, weights)
    return evaluate_model(model, test.images, test.labels, torch.device("cpu"))[1]


def test_median_resists_two_of_ten_byzantine_clients_while_mean_degrades():
    clean_mean = in_process_accuracy("mean", 0)
    byz_mean = in_process_accuracy("mean", 2)
    byz_median = in_process_accuracy("median", 2)
    assert byz_mean < clean_mean - 0.05
    assert byz_median > byz_mean + 0.05
    assert byz_median > clean_mean - 0.05


def test_byzantine_payload_modes():
    rng = np.random.default_rng(0)
    payload = [np.ones((3, 3), np.float32), np.full(3, 2.0, np.float32)]
    kinds = ["weight", "bn_stat"]
    flipped = byzantine_payload(payload, kinds, "sign-flip", 10.0, rng)
    np.testing.assert_array_equal(flipped[0], -payload[0])
    np.testing.assert_array_equal(flipped[1], payload[1])  # statistics stay honest
    np.testing.assert_array_equal(byzantine_payload(payload, kinds, "scaled", 10.0, rng)[0], 10 * payload[0])
    noise = byzantine_payload([rng.normal(size=10000).astype(np.float32)], ["weight"], "random", 3.0, rng)[0]
    assert 2.7 < noise.std() < 3.3


def test_failing_client_raises():
    cfg = parse_run_config({"num-clients": 3, "fail-clients": "1"})
    with pytest.raises(InjectedFault, match="client 1"):
        DefendedClient(cfg, 1).fit(get_weights(new_model(cfg)), {"server-round": 1})


@pytest.mark.slow
def test_same_config_same_metrics_and_faults_survived(tmp_path):
    """Twice the same config through Flower: identical metrics (timings aside), and a
    failing client, a random dropout and a masking defense do not stop the rounds."""
    rows = []
    for k in range(2):
        res = run_simulation({"out-dir": str(tmp_path / f"run{k}"), "num-server-rounds": 2, "num-clients": 4,
                              "local-steps": 3, "partition": "dirichlet:0.5", "defense": "masking:0.4",
                              "fail-clients": "3", "dropout-rate": 0.3, "seed": 7, "attack-every": 0}, timeout=600)
        rows.append([{k2: v for k2, v in r.items() if k2 not in TIMING_KEYS} for r in res.rows])
    assert rows[0] == rows[1]
    for r in rows[0]:
        assert r["clients_ok"] + r["clients_failed"] + r["clients_dropped"] == 4
        assert r["clients_ok"] >= 1
    assert sum(r["clients_failed"] for r in rows[0]) >= 1 or sum(r["clients_dropped"] for r in rows[0]) >= 2
    assert json.loads((tmp_path / "run0" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_client_process_killed_mid_round(tmp_path, monkeypatch):
    """SIGKILL the Ray actor while it runs client 1's fit (client 1 sleeps 15 s there: the
    `slow-clients` fault): the round completes with the failure counted, a new actor takes
    the dead one's place (:func:`fl_defense.flower_engine.replace_dead_actors`; Flower 1.42
    alone would put the dead actor back into its pool, failing later messages), so the next
    round has every client, and the run finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid
    from pathlib import Path

    from conftest import processes_with_marker

    marker = uuid.uuid4().hex
    monkeypatch.setenv("FL_DEFENSE_TEST_MARK", marker)
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "run"
    with open(tmp_path / "run.log", "w") as log:
        launcher = subprocess.Popen([sys.executable, str(root / "run_sim.py"), "--out", str(out), "--rounds", "2",
                                     "--clients", "3", "--set", "local-steps=2", "--set", "slow-clients=1",
                                     "--set", "slow-seconds=15", "--attack-every", "0"], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    busy_since: dict[str, float] = {}
    killed = None
    deadline = time.monotonic() + 600
    while launcher.poll() is None and time.monotonic() < deadline:
        # Ray titles an actor process "ray::ClientAppActor.run" while it runs a message
        running = [line.split()[0] for line in processes_with_marker(marker) if "ray::ClientAppActor.run" in line]
        now = time.monotonic()
        busy_since = {pid: busy_since.get(pid, now) for pid in running}
        if killed is None and len(running) == 1 and now - busy_since[running[0]] > 3:
            killed = int(running[0])  # the only actor still busy: the one client 1 sleeps in
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.3)
    assert launcher.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
    assert killed is not None, "no actor was seen running client 1's fit alone"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert (rows[0]["clients_ok"], rows[0]["clients_failed"]) == (2, 1)  # the killed client, counted
    assert (rows[1]["clients_ok"], rows[1]["clients_failed"]) == (3, 0)  # the actor was replaced
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not processes_with_marker(marker)
    print(f"killed actor {killed} in round 1; rows: "
          + "; ".join(f"round {r['round']}: {r['clients_ok']} ok, {r['clients_failed']} failed" for r in rows))


def test_flower_env_caps_threads_only_when_asked(tmp_path, monkeypatch):
    from experiments.launcher import flower_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = flower_env(tmp_path, 1, 2, "m", threads=1)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path) and env["FL_DEFENSE_RUN_MARK"] == "m"
    assert "OMP_NUM_THREADS" not in flower_env(tmp_path, 1, 2, "m")
