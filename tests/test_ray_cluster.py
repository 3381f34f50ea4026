"""``train --ray-address``: the address is checked before any work, and a grid cell's
clients run on the nodes of an existing Ray cluster (a real two-node cluster on the
loopback address, stopped afterwards whatever happens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.launcher import check_ray_address, free_port
from experiments.processes import marked_processes, sweep
from fl_defense.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
CLUSTER_MARK = "FL_DEFENSE_RAY_CLUSTER_MARK"


def test_ray_address_checked_before_any_work(tmp_path, capsys):
    out = tmp_path / "grid"
    base = ["train", "--out", str(out), "--partitions", "iid", "--aggregations", "mean", "--clients", "2"]
    for bad, says in (("ray://10.0.0.1:10001", "want HOST:PORT"), ("10.0.0.1", "want HOST:PORT"),
                      ("10.0.0.1:port", "want HOST:PORT"), ("10.0.0.1:70000", "want HOST:PORT"),
                      (f"127.0.0.1:{free_port()}", "no Ray cluster answers there")):
        assert main([*base, "--ray-address", bad]) == 2
        err = capsys.readouterr().err
        assert f"error: --ray-address {bad}" in err.replace("'", "") and says in err, err
    assert not out.exists()
    with pytest.raises(ConfigError, match="--head-address '': want HOST:PORT"):
        check_ray_address("", "--head-address")


def _worker_logs_of_clients(temp_dir: Path) -> list[Path]:
    """The logs of this node's Ray workers that ran a Flower ClientApp actor (Ray writes
    ``worker-<id>-<job>-<pid>.out`` per worker under the node's own temp dir, starting
    with ``:actor_name:<class>`` for an actor)."""
    return [p for p in temp_dir.glob("session_*/logs/worker-*.out")
            if ":actor_name:ClientAppActor" in p.read_text(errors="replace")]


def _answers(address: str) -> bool:
    try:
        check_ray_address(address, timeout=1.0)
    except ConfigError:
        return False
    return True


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    probe = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))" % address)
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    return int(proc.stdout.split()[-1]) if proc.returncode == 0 and proc.stdout.split() else 0


@pytest.mark.slow
def test_train_runs_a_cell_on_both_nodes_of_a_ray_cluster(tmp_path):
    marker = uuid.uuid4().hex
    env = {**os.environ, CLUSTER_MARK: marker, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    address = f"127.0.0.1:{port}"
    # short folders: Ray's socket paths live under them and must stay under 108 characters
    head_dir, worker_dir = (Path(tempfile.mkdtemp(prefix=f"ray{i}-", dir="/tmp")) for i in (1, 2))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000",
              "--disable-usage-stats", "--block"]
    logs = []
    try:
        for cmd, folder in (([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false"], head_dir),
                            ([RAY, "start", f"--address={address}"], worker_dir)):
            log = open(tmp_path / f"{folder.name}.log", "wb")
            logs.append(log)
            subprocess.Popen([*cmd, *common, f"--temp-dir={folder}"], env=env, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
            deadline = time.monotonic() + 90
            want = 1 if folder is head_dir else 2
            while not _answers(address) or _alive_nodes(address, env) < want:
                assert time.monotonic() < deadline, (tmp_path / f"{folder.name}.log").read_text(errors="replace")
                time.sleep(1)

        out = tmp_path / "grid"
        run_env = {**env, "FL_DEFENSE_TEST_MARK": marker + "-train"}
        run_env.pop(CLUSTER_MARK)
        proc = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "train", "--out", str(out),
                               "--partitions", "iid", "--aggregations", "mean", "--clients", "2", "--rounds", "2",
                               "--attack-every", "0", "--ray-address", address, "--quiet"],
                              env=run_env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        cell = out / "cells" / "iid-mean-none"
        assert json.loads((cell / "summary.json").read_text())["status"] == "completed"
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2] and all(r["clients_ok"] == 2 for r in rows)
        # the cell's two clients ran one on each node (one CPU each), and no Ray of the run's own
        assert _worker_logs_of_clients(head_dir), f"no ClientApp actor ran on the head node ({head_dir})"
        assert _worker_logs_of_clients(worker_dir), f"no ClientApp actor ran on the worker node ({worker_dir})"
        assert not marked_processes("FL_DEFENSE_TEST_MARK", marker + "-train")
        assert _alive_nodes(address, env) == 2  # the cluster is not the run's to stop
    finally:
        sweep(CLUSTER_MARK, marker)
        for log in logs:
            log.close()
        for folder in (head_dir, worker_dir):
            shutil.rmtree(folder, ignore_errors=True)
    assert not marked_processes(CLUSTER_MARK, marker)
