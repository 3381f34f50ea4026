"""Flower's simulation engine as fl_defense.flower_engine changes it (shorter polling, dead
client actors replaced): what it relies on in Flower is still there, each piece does what it
says, and a real simulation gives the same rows with the polling change on and off."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest

from fl_defense import flower_engine as fp
from fl_defense.errors import ConfigError


def test_flower_still_has_what_the_engine_changes_rely_on():
    problems = fp.flower_internals_problems()
    assert not problems, ("the installed Flower changed what fl_defense/flower_engine.py relies on "
                          "(update that module):\n  " + "\n  ".join(problems))


def test_the_check_names_the_flower_attribute_that_changed(monkeypatch):
    import flwr.server.superlink.fleet.vce.vce_api as vce
    import flwr.superlink.grid as grids

    def add_messages_to_queue(state, queue, nodes_mapping):  # no stop event any more
        return None

    class InMemoryGrid:
        def __init__(self, state_factory):
            pass

        def send_and_receive(self, messages, *, timeout=None):
            return []

    monkeypatch.setattr(vce, "add_messages_to_queue", add_messages_to_queue)
    monkeypatch.setattr(grids, "InMemoryGrid", InMemoryGrid)
    problems = "\n".join(fp.flower_internals_problems())
    assert ("flwr.server.superlink.fleet.vce.vce_api.add_messages_to_queue(state, queue, nodes_mapping) "
            "has no parameter 'f_stop'") in problems
    assert "flwr.superlink.grid.InMemoryGrid.__init__(self, state_factory) has no parameter 'pull_interval'" \
        in problems
    assert "flwr.superlink.grid.InMemoryGrid.send_and_receive no longer reads self.pull_interval" in problems
    monkeypatch.delattr(vce, "add_messages_to_queue")
    assert "add_messages_to_queue (the engine's message extractor) is gone" in "\n".join(
        fp.flower_internals_problems())


def test_the_check_names_a_changed_actor_pool(monkeypatch):
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    def fetch_result_and_return_actor_to_pool(self, future, timeout):  # a new signature
        return None

    monkeypatch.setattr(BasicActorPool, "fetch_result_and_return_actor_to_pool", fetch_result_and_return_actor_to_pool)
    problems = "\n".join(fp.flower_internals_problems())
    assert ("flwr.simulation.ray_transport.ray_actor.BasicActorPool.fetch_result_and_return_actor_to_pool"
            "(self, future) (where a task's result is fetched) is gone or changed") in problems
    assert fp.replace_dead_actors() is False
    assert BasicActorPool.fetch_result_and_return_actor_to_pool is fetch_result_and_return_actor_to_pool


def test_a_dead_actor_is_replaced_and_a_failed_clientapp_keeps_its_actor(monkeypatch):
    """The pool's own ``create_actor_fn`` makes the replacement, which the engine then
    gives back to the pool; the error still reaches the engine.  A result, or an error of
    the ClientApp, leaves the pool as Flower has it."""
    import flwr.server.superlink.fleet.vce.vce_api  # noqa: F401  (loaded where the engine runs)
    import ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    def original(self, future):
        if future == "died":
            raise ray.exceptions.ActorDiedError()
        if future == "raised":
            raise ray.exceptions.RayTaskError("client_fn", "Traceback", ValueError("bad"))
        self.add_actor_back_to_pool(future)
        return "result"

    monkeypatch.setattr(BasicActorPool, "fetch_result_and_return_actor_to_pool", original)
    assert fp.replace_dead_actors() is True
    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool
    assert getattr(fetch, fp._WRAPPED) is original
    assert fp.replace_dead_actors() is True and BasicActorPool.fetch_result_and_return_actor_to_pool is fetch

    pool = BasicActorPool.__new__(BasicActorPool)
    made = iter(["new actor"])
    pool.pool, pool.create_actor_fn = [], lambda: next(made)
    pool._future_to_actor = {"died": "dead actor", "raised": "actor a", "ok": "actor b"}
    with pytest.raises(ray.exceptions.ActorDiedError):
        pool.fetch_result_and_return_actor_to_pool("died")
    pool.add_actor_back_to_pool("died")            # what the engine does after any error
    with pytest.raises(ray.exceptions.RayTaskError):
        pool.fetch_result_and_return_actor_to_pool("raised")
    pool.add_actor_back_to_pool("raised")
    assert pool.fetch_result_and_return_actor_to_pool("ok") == "result"
    assert pool.pool == ["new actor", "actor a", "actor b"] and pool._future_to_actor == {}


def test_poll_interval_from_the_environment():
    assert fp.poll_interval({}) == fp.DEFAULT_INTERVAL == 0.005
    assert fp.poll_interval({fp.ENV: ""}) == fp.DEFAULT_INTERVAL
    assert fp.poll_interval({fp.ENV: "0.02"}) == 0.02
    assert fp.poll_interval({fp.ENV: " OFF "}) is None
    for bad in ("0", "-1", "fast", "nan", "2"):
        with pytest.raises(ConfigError, match=rf"FL_DEFENSE_FLOWER_POLL='{bad}': want seconds in \(0, 1\] or 'off'"):
            fp.poll_interval({fp.ENV: bad})


def test_bad_poll_variable_refused_before_a_run_starts(monkeypatch, tmp_path):
    from experiments.launcher import run_simulation

    monkeypatch.setenv(fp.ENV, "soon")
    with pytest.raises(ConfigError, match="FL_DEFENSE_FLOWER_POLL='soon'"):
        run_simulation({"out-dir": str(tmp_path / "run"), "num-clients": 2, "num-server-rounds": 1})
    assert not (tmp_path / "run").exists()


def test_short_wait_waits_the_interval_or_duty_times_the_last_pass():
    event = threading.Event()
    short = fp._ShortWait(event, 0.01)
    start = time.monotonic()
    assert short.wait(0.1) is False
    assert time.monotonic() - start < 0.08          # the interval, not Flower's 0.1 s
    time.sleep(0.03)                                  # a slow pass over the nodes
    start = time.monotonic()
    short.wait(0.1)
    assert time.monotonic() - start >= 0.09          # DUTY x 0.03 s, capped at Flower's own tick
    event.set()
    assert short.is_set() and short.wait(0.1) is True


class _FakeState:
    """What the extractor reads: ``get_message_ins(node_id, limit)``; counts its passes."""

    def __init__(self, nodes: int) -> None:
        self.nodes, self.calls, self.pending = nodes, 0, {}

    def get_message_ins(self, node_id, limit):
        self.calls += 1
        return [self.pending.pop(node_id)] if node_id in self.pending else []


def _passes(extractor, seconds: float, nodes: int = 3) -> tuple[int, float]:
    """Passes the extractor makes over ``nodes`` in ``seconds``, and how long a message put
    in the state halfway took to reach the queue."""
    state, out, stop = _FakeState(nodes), queue.Queue(), threading.Event()
    th = threading.Thread(target=extractor, args=(state, out, {n: n for n in range(nodes)}, stop), daemon=True)
    th.start()
    time.sleep(seconds / 2)
    sent = time.monotonic()
    state.pending[1] = "message"
    assert out.get(timeout=2) == "message"
    latency = time.monotonic() - sent
    time.sleep(seconds / 2)
    stop.set()
    th.join(timeout=2)
    assert not th.is_alive(), "the extractor did not stop with its stop event"
    return state.calls // nodes, latency


def test_engine_extractor_passes_every_interval_and_stops(monkeypatch):
    import flwr.server.superlink.fleet.vce.vce_api as vce

    original = vce.add_messages_to_queue
    monkeypatch.setattr(vce, "add_messages_to_queue", original)  # restored after the test
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as before the engine connects to Ray
    flower_passes, _ = _passes(original, 0.4)
    assert fp.shorten_engine_polling(0.005) is True
    assert vce.add_messages_to_queue is not original
    assert fp.shorten_engine_polling(0.005) is True and getattr(vce.add_messages_to_queue, fp._WRAPPED) is original
    short_passes, latency = _passes(vce.add_messages_to_queue, 0.4)
    assert flower_passes <= 6, flower_passes        # Flower's own: a pass per 0.1 s
    assert short_passes >= 20, short_passes         # ours: a pass per 5 ms (80 when idle)
    assert latency < 0.05, latency
    assert fp.flower_internals_problems() == []      # the check sees through the wrapper


def test_engine_polling_left_alone_where_it_cannot_act(monkeypatch):
    import flwr.server.superlink.fleet.vce.vce_api as vce

    original = vce.add_messages_to_queue
    monkeypatch.setattr(vce, "add_messages_to_queue", original)
    monkeypatch.setenv(fp.ENV, "off")
    assert fp.shorten_engine_polling() is False and vce.add_messages_to_queue is original

    class Ray:  # a Ray worker: connected before the ClientApp is imported
        @staticmethod
        def is_initialized():
            return True

    monkeypatch.delenv(fp.ENV)
    monkeypatch.setitem(__import__("sys").modules, "ray", Ray)
    assert fp.shorten_engine_polling() is False and vce.add_messages_to_queue is original


def test_grid_pull_interval_set_on_the_in_memory_grid_only(monkeypatch):
    from flwr.superlink.grid import InMemoryGrid

    class Factory:
        def state(self):
            return object()

    grid = InMemoryGrid(state_factory=Factory())
    assert grid.pull_interval == 0.1                 # Flower's default, which the simulation uses
    monkeypatch.setenv(fp.ENV, "off")
    assert fp.shorten_grid_polling(grid) is False and grid.pull_interval == 0.1
    monkeypatch.setenv(fp.ENV, "0.002")
    assert fp.shorten_grid_polling(grid) is True and grid.pull_interval == 0.002
    other = type("HttpGrid", (), {"pull_interval": 0.1})()
    assert fp.shorten_grid_polling(other, 0.005) is False and other.pull_interval == 0.1


@pytest.mark.slow
def test_real_simulation_same_rows_with_polling_on_and_off(tmp_path, monkeypatch):
    """Two real runs (2 clients, 3 rounds): with the default interval both changes reach
    Flower's processes (their log says so) and the rows are those of Flower's own polling."""
    import json

    from experiments.launcher import run_simulation

    rows, logs = {}, {}
    for poll in ("off", ""):
        monkeypatch.setenv(fp.ENV, poll)
        out = tmp_path / f"poll-{poll or 'default'}"
        result = run_simulation({"out-dir": str(out), "num-clients": 2, "num-server-rounds": 3,
                                 "attack-every": 0}, timeout=300)
        assert json.loads((out / "summary.json").read_text())["status"] == "completed"
        rows[poll] = [{k: r[k] for k in ("round", "accuracy", "loss", "train_loss", "clients_ok")}
                      for r in result.rows]
        logs[poll] = result.log_path.read_text(errors="replace")
    assert [r["round"] for r in rows[""]] == [1, 2, 3] and all(r["clients_ok"] == 2 for r in rows[""])
    assert rows[""] == rows["off"]
    grid_line = "fl-defense: the ServerApp's grid pulls replies every 0.005 s"
    engine_line = "fl-defense: the simulation engine's message extractor polls every 0.005 s"
    assert logs[""].count(grid_line) == 1 and logs[""].count(engine_line) == 1, logs[""][-3000:]
    assert grid_line not in logs["off"] and engine_line not in logs["off"]
    assert "left at its own tick" not in logs[""] and "polling left as it is" not in logs[""]
    assert os.environ.get(fp.ENV) == ""
