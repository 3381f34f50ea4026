"""A launcher killed with SIGKILL: its run leaves no process behind, and ``--resume``
continues it to the same ``metrics.jsonl`` as an uninterrupted run (real Flower runs)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import leftover_processes

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("mark_processes")
TIMING_KEYS = {"seconds", "attack_seconds"}
# 4 rounds of 3 clients; 2 sampled per round (seeded sampling across the resume too);
# client 0 sleeps 1.5 s in fit so that a round lasts long enough to be killed in
RUN = ["--rounds", "4", "--clients", "3", "--defense", "masking:0.3", "--set", "local-steps=3", "--attack-every", "0",
       "--set", "fraction-fit=0.7", "--set", "slow-clients=0", "--set", "slow-seconds=1.5"]


def run_sim(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_sim.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def rows_of(folder: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def kill_launcher_mid_run(out: Path, log: Path, after_rows: int) -> None:
    """Start run_sim.py in a session of its own, SIGKILL its whole process group once
    ``after_rows`` rounds are recorded."""
    with open(log, "w") as fh:
        launcher = subprocess.Popen([sys.executable, str(ROOT / "run_sim.py"), "--out", str(out), *RUN],
                                    stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and launcher.poll() is None:
        path = out / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= after_rows:
            break
        time.sleep(0.2)
    assert launcher.poll() is None, log.read_text()
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait(timeout=30)


@pytest.mark.slow
def test_sigkilled_launcher_leaves_no_process_and_resume_equals_uninterrupted(tmp_path):
    reference = run_sim("--out", str(tmp_path / "ref"), *RUN)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert not leftover_processes()

    out = tmp_path / "killed"
    homes = set((ROOT / ".flwr").glob("run-*"))
    kill_launcher_mid_run(out, tmp_path / "killed.log", after_rows=2)
    killed_at = time.monotonic()
    while leftover_processes() and time.monotonic() - killed_at < 60:
        time.sleep(1)
    assert not leftover_processes(), "processes of the killed run are still alive after 60 s"
    orphan_seconds = time.monotonic() - killed_at
    assert not (out / "summary.json").exists()
    done = len(rows_of(out))
    assert 2 <= done < 4
    assert set((ROOT / ".flwr").glob("run-*")) <= homes  # the watchdog deleted the run's Flower state

    # a flag that would change the recorded config is refused, naming the key; nothing changes
    before = (out / "metrics.jsonl").read_bytes()
    refused = run_sim("--resume", str(out), "--defense", "none", "--set", "local-steps=4", timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "defense" in refused.stderr and "local-steps" in refused.stderr, refused.stderr
    assert (out / "metrics.jsonl").read_bytes() == before

    # the same flags again are accepted; the run goes on from its last finished round
    resumed = run_sim("--resume", str(out), "--rounds", "4")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming after round" in resumed.stdout
    assert rows_of(out) == rows_of(tmp_path / "ref")
    assert [r["clients_sampled"] for r in rows_of(out)] == [r["clients_sampled"] for r in rows_of(tmp_path / "ref")]
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not leftover_processes()
    print(f"killed after {done} rounds; its processes were gone {orphan_seconds:.1f} s after the SIGKILL")

    # resuming a completed run does nothing
    again = run_sim("--resume", str(out), timeout=120)
    assert again.returncode == 0 and "nothing to resume" in again.stdout
