"""``flwr run .`` directly: a bad run config fails loudly (one error line, no traceback), and
the project's command stops the local SuperLink that ``flwr run`` started, by PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_bad_config_prints_one_error_line_and_the_superlink_is_stopped(tmp_path):
    from experiments.processes import local_superlinks

    flwr = Path(sys.executable).parent / "flwr"
    home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    try:
        proc = subprocess.run([str(flwr), "run", str(ROOT), "--stream", "--federation-config",
                               "num-supernodes=10 client-resources-num-cpus=1", "--run-config",
                               f"out-dir='{tmp_path / 'out'}' defense='maskng:0.4'"],
                              capture_output=True, text=True, env=env, timeout=300)
        text = proc.stdout + proc.stderr
        errors = [line for line in text.splitlines() if "fl-defense: the run config is invalid" in line]
        assert len(errors) == 1 and "did you mean 'masking'" in errors[0], text
        assert "Traceback" not in text and "FutureWarning" not in text, text
        assert proc.returncode == 0  # Flower's `flwr run --stream` itself: 0 even when the run failed
        assert not (tmp_path / "out" / "summary.json").exists()
        assert local_superlinks(home), "flwr run started no local SuperLink?"
    finally:
        stop = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "stop-superlink", "--flwr-home", str(home)],
                              capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and "stopped the local SuperLink" in stop.stdout, stop.stdout + stop.stderr
    assert not local_superlinks(home)
    shutil.rmtree(home, ignore_errors=True)
