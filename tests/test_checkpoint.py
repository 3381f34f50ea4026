"""The checkpoint and the round offset of a resumed run (strategies/checkpoint.py), and the
watchdog that stops a killed launcher's processes (experiments/processes.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.server.client_manager import SimpleClientManager

from clients.numpy_client import DefendedClient
from fl_defense.config import parse_run_config
from fl_defense.errors import ConfigError
from fl_defense.io import read_jsonl
from strategies.checkpoint import (CHECKPOINT, Checkpoint, checkpoint_for, load_checkpoint, recorded_config,
                                   save_checkpoint, stack_layers)
from strategies.factory import build_strategy

ROOT = Path(__file__).resolve().parent.parent
TIMING_KEYS = {"seconds", "attack_seconds"}


class Proxy:
    """What Flower's server holds for a node: a random node id, and the client behind it."""

    def __init__(self, cid: str, cfg, partition: int) -> None:
        self.cid = cid
        self.client = DefendedClient(cfg, partition).to_client()

    def fit(self, ins, timeout, group_id):
        return self.client.fit(ins)

    def get_properties(self, ins, timeout, group_id):
        return self.client.get_properties(ins)


def drive(strategy, proxies, num_rounds: int) -> None:
    """Flower's legacy server loop (flwr.server.Server.fit), in-process: rounds from 1."""
    manager = SimpleClientManager()
    for proxy in proxies:
        manager.register(proxy)
    parameters = strategy.initialize_parameters(manager)
    strategy.evaluate(0, parameters)
    for r in range(1, num_rounds + 1):
        results, failures = [], []
        for proxy, ins in strategy.configure_fit(r, parameters, manager):
            try:
                results.append((proxy, proxy.fit(ins, None, r)))
            except Exception as exc:  # Flower counts a raising client as a failure
                failures.append(exc)
        new, _ = strategy.aggregate_fit(r, results, failures)
        parameters = new or parameters
        strategy.evaluate(r, parameters)


CONFIG = {"num-server-rounds": 3, "num-clients": 4, "local-steps": 2, "fraction-fit": 0.5, "dropout-rate": 0.2,
          "fail-clients": "3", "defense": "masking:0.3", "seed": 1, "attack-every": 0}


def rows(folder: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(folder / "metrics.jsonl")]


def start(cfg, folder: Path, resume: bool = False):
    from fl_defense.task import get_weights, new_model

    checkpoint = checkpoint_for(folder, cfg, [w.shape for w in get_weights(new_model(cfg))]) if resume else None
    rng = np.random.default_rng()  # node ids differ from run to run, as in Flower
    proxies = [Proxy(str(rng.integers(2**62)), cfg, c) for c in rng.permutation(cfg.num_clients)]
    return build_strategy(cfg, folder, checkpoint), proxies, (checkpoint.round if checkpoint else 0)


def test_resumed_stack_gives_the_uninterrupted_rows(tmp_path):
    ref_dir, cut_dir, late_dir = tmp_path / "ref", tmp_path / "cut", tmp_path / "late"
    for d in (ref_dir, cut_dir):
        d.mkdir()
    cfg = {d: parse_run_config({**CONFIG, "out-dir": str(d)}) for d in (ref_dir, cut_dir)}
    strategy, proxies, _ = start(cfg[ref_dir], ref_dir)
    drive(strategy, proxies, 3)
    reference = rows(ref_dir)
    assert [r["round"] for r in reference] == [1, 2, 3] and all("clients_sampled" in r for r in reference)
    assert load_checkpoint(ref_dir).round == 3

    # killed after round 1: resume runs Flower rounds 1..2 as rounds 2..3
    strategy, proxies, _ = start(cfg[cut_dir], cut_dir)
    drive(strategy, proxies, 1)
    shutil.copy(cut_dir / CHECKPOINT, tmp_path / "after-round-1.npz")
    resumed, proxies, done = start(cfg[cut_dir], cut_dir, resume=True)
    assert done == 1
    drive(resumed, proxies, 3 - done)
    assert rows(cut_dir) == reference

    # killed after rows (and even summary.json) were written past the last checkpoint:
    # they are dropped and those rounds run again
    shutil.copytree(ref_dir, late_dir, dirs_exist_ok=True)
    shutil.copy(tmp_path / "after-round-1.npz", late_dir / CHECKPOINT)
    late = parse_run_config({**CONFIG, "out-dir": str(late_dir)})
    resumed, proxies, done = start(late, late_dir, resume=True)
    assert done == 1 and len(rows(late_dir)) == 1 and not (late_dir / "summary.json").exists()
    drive(resumed, proxies, 2)
    assert rows(late_dir) == reference
    assert json.loads((late_dir / "summary.json").read_text())["rounds"] == 3


def test_checkpoint_roundtrip_keeps_weights_bit_exact(tmp_path):
    cfg = parse_run_config({"model": "bncnn", "out-dir": str(tmp_path)})
    from fl_defense.task import get_weights, new_model

    weights = get_weights(new_model(cfg))
    assert any(np.issubdtype(w.dtype, np.integer) for w in weights)  # num_batches_tracked
    save_checkpoint(tmp_path, Checkpoint(2, 5, weights, recorded_config(cfg), {"0:RecordingStrategy": {"rows": []}}))
    back = load_checkpoint(tmp_path)
    assert (back.round, back.num_rounds) == (2, 5)
    assert [w.dtype for w in back.weights] == [w.dtype for w in weights]
    assert all(np.array_equal(a, b) for a, b in zip(back.weights, weights))
    assert back.config == recorded_config(cfg) and recorded_config(cfg)["resume"] is False


def test_checkpoint_refuses_other_config_shapes_and_stack(tmp_path):
    cfg = parse_run_config({"out-dir": str(tmp_path), "num-server-rounds": 3})
    from fl_defense.task import get_weights, new_model

    shapes = [w.shape for w in get_weights(new_model(cfg))]
    assert checkpoint_for(tmp_path, cfg, shapes) is None  # nothing to resume: from round 1
    save_checkpoint(tmp_path, Checkpoint(1, 3, get_weights(new_model(cfg)), recorded_config(cfg), {}))
    other = parse_run_config({"out-dir": str(tmp_path), "num-server-rounds": 3, "defense": "pruning:0.5"})
    with pytest.raises(ConfigError, match="defense"):
        checkpoint_for(tmp_path, other, shapes)
    with pytest.raises(ConfigError, match="shapes"):
        checkpoint_for(tmp_path, cfg, shapes[:-1])
    with pytest.raises(ConfigError, match="another strategy stack"):  # the recorder's rows are missing
        build_strategy(cfg, tmp_path, load_checkpoint(tmp_path))
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="checkpoint.npz is unreadable"):
        load_checkpoint(tmp_path)


def test_stack_is_resumable_outermost(tmp_path):
    cfg = parse_run_config({"out-dir": str(tmp_path), "attack-every": 0})
    names = [type(layer).__name__ for layer in stack_layers(build_strategy(cfg, tmp_path))]
    assert names[:3] == ["ResumableStrategy", "RecordingStrategy", "SeededSampling"]


# ---------------------------------------------------------------- the watchdog
def marked(marker: str) -> list[int]:
    from experiments.processes import marked_processes

    return marked_processes("FL_DEFENSE_RUN_MARK", marker)


def test_watchdog_stops_a_killed_launchers_processes(tmp_path):
    """A stand-in launcher starts marked processes in sessions of their own (as the
    SuperLink and `flwr run` are) and a watchdog; SIGKILL the launcher: the watchdog stops
    them all, and what their sessions hold without the marker, deletes the cleanup folder,
    and exits."""
    marker = uuid.uuid4().hex
    home = tmp_path / "flwr-home"
    home.mkdir()
    unmarked = tmp_path / "unmarked.pid"
    script = f"""
import os, subprocess, sys, time
sys.path.insert(0, {str(ROOT)!r})
from experiments.launcher import start_watchdog
env = dict(os.environ, FL_DEFENSE_RUN_MARK={marker!r})
for _ in range(2):  # each in its own session, one with a child of its own
    subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); time.sleep(300)"],
                     env=env, start_new_session=True)
# a session leader whose child loses the marker (as a Ray agent that overwrites its environment)
subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys, time; "
                  "env = {{k: v for k, v in os.environ.items() if k != 'FL_DEFENSE_RUN_MARK'}}; "
                  "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], env=env); "
                  "open({str(unmarked)!r}, 'w').write(str(child.pid)); time.sleep(300)"],
                 env=env, start_new_session=True)
start_watchdog({marker!r}, cleanup=[{str(home)!r}])
print("ready", flush=True)
time.sleep(300)
"""
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
    assert launcher.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    while (len(marked(marker)) < 5 or not unmarked.exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(marked(marker)) == 5
    time.sleep(0.5)
    child = int(unmarked.read_text())
    assert child not in marked(marker)
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    killed = time.monotonic()
    from experiments.processes import zombie  # gone, or dead and not yet reaped

    while (marked(marker) or home.exists() or not zombie(child)) and time.monotonic() - killed < 30:
        time.sleep(0.2)
    assert marked(marker) == [] and not home.exists()
    assert zombie(child), "the unmarked child of a marked session was left running"
    from conftest import processes_with_marker

    from experiments.processes import LINGER

    def watchdogs() -> list[str]:
        return [p for p in processes_with_marker(os.environ.get("FL_DEFENSE_TEST_MARK", "-"))
                if "experiments.processes" in p]

    while watchdogs() and time.monotonic() - killed < 30 + LINGER:  # it looks a while longer, then exits
        time.sleep(0.5)
    assert not watchdogs()


def test_second_launcher_is_refused_while_the_first_lives(tmp_path):
    from experiments.launcher import OWNER_FILE, claim_out_dir, release_out_dir

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from experiments.processes import proc_start_time

        (tmp_path / OWNER_FILE).write_text(json.dumps({"pid": sleeper.pid, "start": proc_start_time(sleeper.pid),
                                                       "marker": uuid.uuid4().hex}))
        with pytest.raises(ConfigError, match="in use by a running launcher"):
            claim_out_dir(tmp_path, uuid.uuid4().hex)
    finally:
        sleeper.kill()
        sleeper.wait()
    claim_out_dir(tmp_path, "m1", wait=1)  # its launcher is dead: the folder is free again
    assert json.loads((tmp_path / OWNER_FILE).read_text())["pid"] == os.getpid()
    release_out_dir(tmp_path)
    assert not (tmp_path / OWNER_FILE).exists()


def test_a_process_of_a_given_session_is_swept_without_the_marker():
    """Ray's agents rename themselves and can overwrite their environment where /proc reads
    it: the sweep also stops every process of the sessions it is given."""
    from experiments.processes import marked_processes, sweep

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        marker = uuid.uuid4().hex
        assert marked_processes("FL_DEFENSE_RUN_MARK", marker) == []
        assert marked_processes("FL_DEFENSE_RUN_MARK", marker, sessions=(proc.pid,)) == [proc.pid]
        assert sweep("FL_DEFENSE_RUN_MARK", marker, grace=2.0, sessions=(proc.pid,)) == 1
        assert proc.wait(timeout=10) is not None
    finally:
        proc.kill()
