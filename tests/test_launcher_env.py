"""The environment the launcher gives Flower's processes: Ray's worker niceness and the
cluster address."""

from __future__ import annotations

from pathlib import Path

from experiments.launcher import flower_env


def test_ray_workers_run_at_the_niceness_of_the_simulation(monkeypatch):
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = flower_env(Path("/tmp/home"), 1, 2)
    assert env["RAY_worker_niceness"] == "0" and "RAY_ADDRESS" not in env
    monkeypatch.setenv("RAY_worker_niceness", "15")  # a user's own setting is kept
    assert flower_env(Path("/tmp/home"), 1, 2)["RAY_worker_niceness"] == "15"


def test_ray_address_given_to_the_run(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    assert flower_env(Path("/tmp/home"), 1, 2)["RAY_ADDRESS"] == "10.0.0.9:6379"  # inherited
    assert flower_env(Path("/tmp/home"), 1, 2, ray_address="10.0.0.1:6379")["RAY_ADDRESS"] == "10.0.0.1:6379"
