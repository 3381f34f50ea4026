"""A third-party defense, installed as a separate package that declares an entry point in the
group ``fl_defense.defenses``, is listed and runs in a real simulation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGIN_MODULE = '''
"""A tiny plug-in: upload the sign of the update times its mean magnitude."""

import numpy as np

from fl_defense.defenses import Defense
from fl_defense.defenses.base import cast, is_update


def sign(arrays, kinds, scale, flags, rng):
    out = []
    for a, k in zip(arrays, kinds):
        if not is_update(a, k):
            out.append(a.copy())
            continue
        v = a.astype(np.float64)
        out.append(cast(np.sign(v) * np.abs(v).mean() * scale, a))
    return out


SIGN = Defense("sign", sign, "upload sign(u) times the mean |u| times s", "s", 0.0, False, example="sign:1",
               grid=(1.0, 0.5, 0.1), aware_objective="cosine")
'''


def install_plugin(tmp: Path) -> Path:
    """Build and install the plug-in into a folder of its own (pip --target); returns it."""
    src = tmp / "src"
    (src / "fl_sign_plugin").mkdir(parents=True)
    (src / "fl_sign_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    (src / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "fl-sign-plugin"
        version = "0.1"

        [project.entry-points."fl_defense.defenses"]
        sign = "fl_sign_plugin:SIGN"

        [tool.setuptools]
        packages = ["fl_sign_plugin"]
    """))
    site = tmp / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


@pytest.mark.slow
def test_a_plugin_defense_is_listed_and_runs_in_a_simulation(tmp_path):
    site = install_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "defenses"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and "sign:S" in listed.stdout and "sign(u)" in listed.stdout
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "--defense", "sign:0.5", "--rounds", "2",
                          "--clients", "2", "--attack-every", "1", "--set", "attack-max-iter=30", "--set",
                          "attack-restarts=0", "--attack-workers", "0", "--quiet", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((out / "config.json").read_text())["defense"] == "sign:0.5"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["clients_ok"] == 2 and rows[0]["attack_objective"] == "l2"
    # without the plug-in on the path the name is unknown, refused before anything starts
    bare = subprocess.run([sys.executable, str(ROOT / "run_sim.py"), "--defense", "sign:0.5", "--out",
                           str(tmp_path / "bare")], capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and "unknown defense 'sign'" in bare.stderr
