"""The environment the launcher gives Flower's processes: the settings of the Ray that
Flower starts, and the address of a cluster to join instead."""

from __future__ import annotations

from pathlib import Path

from experiments.launcher import RAY_INLINE_BYTES, flower_env

RAY_SETTINGS = ("RAY_worker_niceness", "RAY_max_direct_call_object_size")


def test_settings_of_the_ray_that_flower_starts(monkeypatch):
    for name in (*RAY_SETTINGS, "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    env = flower_env(Path("/tmp/home"), 1, 2)
    assert env["RAY_worker_niceness"] == "0" and "RAY_ADDRESS" not in env
    assert env["RAY_max_direct_call_object_size"] == str(RAY_INLINE_BYTES) == str(4 * 2**20)
    monkeypatch.setenv("RAY_worker_niceness", "15")  # a user's own setting is kept
    monkeypatch.setenv("RAY_max_direct_call_object_size", "102400")
    env = flower_env(Path("/tmp/home"), 1, 2)
    assert env["RAY_worker_niceness"] == "15" and env["RAY_max_direct_call_object_size"] == "102400"


def test_ray_address_given_to_the_run_and_its_settings_left_to_the_cluster(monkeypatch):
    for name in RAY_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    env = flower_env(Path("/tmp/home"), 1, 2)
    assert env["RAY_ADDRESS"] == "10.0.0.9:6379" and not set(RAY_SETTINGS) & set(env)  # inherited
    monkeypatch.delenv("RAY_ADDRESS")
    env = flower_env(Path("/tmp/home"), 1, 2, ray_address="10.0.0.1:6379")
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379" and not set(RAY_SETTINGS) & set(env)
