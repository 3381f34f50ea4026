"""The recorder: one row per round in metrics.jsonl, merged from what the stack returns."""

import json

import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.strategy import Strategy

from strategies.dropout import DropoutStrategy
from strategies.recorder import RecordingStrategy


class Proxy:
    def __init__(self, cid):
        self.cid = str(cid)


class Inner(Strategy):
    """A stand-in strategy: returns the first upload and fixed metrics; evaluates to fixed figures."""

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return []

    def aggregate_fit(self, server_round, results, failures):
        return (results[0][1].parameters if results else None), {"some-metric": 7, "attack_leaked": 2}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return 0.5 * server_round, {"accuracy": 0.1 * server_round}


def answer(cid, loss, dropped=False):
    metrics = {"client-id": cid, "dropped": 1} if dropped else {"client-id": cid, "train-loss": loss}
    return (Proxy(cid), FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.zeros(2)]), 1, metrics))


def test_rows_merge_the_stack_figures_and_summary_comes_last(tmp_path):
    rec = RecordingStrategy(DropoutStrategy(Inner()), tmp_path, num_rounds=2)
    assert rec.evaluate(0, None) is not None  # round 0 (initial evaluation) writes no row
    assert not (tmp_path / "metrics.jsonl").exists()
    rec.configure_fit(1, None, None)
    rec.aggregate_fit(1, [answer(0, 1.0), answer(1, 3.0), answer(2, None, dropped=True)], [RuntimeError("x")])
    rec.evaluate(1, None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["round"] == 1 and row["clients_ok"] == 2 and row["clients_failed"] == 1
    assert row["clients_dropped"] == 1 and row["train_loss"] == 2.0
    assert row["some_metric"] == 7 and row["attack_leaked"] == 2  # '-' becomes '_'
    assert row["accuracy"] == 0.1 and row["loss"] == 0.5 and row["seconds"] >= 0
    assert not (tmp_path / "summary.json").exists()
    rec.configure_fit(2, None, None)
    rec.aggregate_fit(2, [answer(0, 5.0)], [])
    rec.evaluate(2, None)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and rows[1]["train_loss"] == 5.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final"]["round"] == 2


def test_train_loss_mean_does_not_depend_on_arrival_order(tmp_path):
    losses = [1.3436424411240122, 8.474337369372327, 7.6377461897661405, 2.550690257394217,
              4.954350870919409, 4.494910647887381]  # a plain sum differs in the last bit reversed
    means = []
    for order in (losses, losses[::-1], sorted(losses)):
        rec = RecordingStrategy(Inner(), tmp_path / str(len(means)), num_rounds=1)
        rec.configure_fit(1, None, None)
        rec.aggregate_fit(1, [answer(i, v) for i, v in enumerate(order)], [])
        rec.evaluate(1, None)
        means.append(json.loads((tmp_path / str(len(means)) / "metrics.jsonl").read_text())["train_loss"])
    assert means[0] == means[1] == means[2]


def test_a_round_without_aggregate_is_marked(tmp_path):
    rec = RecordingStrategy(Inner(), tmp_path, num_rounds=3)
    rec.configure_fit(1, None, None)
    rec.aggregate_fit(1, [], [RuntimeError("all failed")])
    rec.evaluate(1, None)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["aggregated"] is False and row["clients_ok"] == 0 and row["train_loss"] is None


class Late(Inner):
    """A stand-in for the hook with attack workers: round r's figures come when the test says."""

    def __init__(self):
        self.figures, self.ready = {}, set()

    def aggregate_fit(self, server_round, results, failures):
        self.figures[server_round] = {"attack-leaked": server_round}
        return super().aggregate_fit(server_round, results, failures)

    def has_late_figures(self, server_round):
        return server_round in self.figures

    def figures_ready(self, server_round):
        return server_round in self.ready

    def take_figures(self, server_round):
        return self.figures.pop(server_round)


def test_rows_wait_for_late_figures_and_are_written_in_round_order(tmp_path):
    from strategies.checkpoint import ResumableStrategy, load_checkpoint
    from fl_defense.config import parse_run_config

    late = Late()
    rec = RecordingStrategy(late, tmp_path, num_rounds=3)
    top = ResumableStrategy(rec, parse_run_config({"num-server-rounds": 3}), tmp_path)

    def round_(r):
        top.configure_fit(r, None, None)
        top.aggregate_fit(r, [answer(0, 1.0)], [])
        top.evaluate(r, ndarrays_to_parameters([np.full(2, float(r))]))

    def written():
        path = tmp_path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    round_(1)
    round_(2)
    assert written() == [] and load_checkpoint(tmp_path) is None  # round 1's figures are not there yet
    late.ready.add(2)
    top.configure_fit(3, None, None)
    top.aggregate_fit(3, [answer(0, 1.0)], [])
    assert written() == [] and not (tmp_path / "summary.json").exists()  # round 2 is ready; round 1 is not
    top.evaluate(3, ndarrays_to_parameters([np.full(2, 3.0)]))  # the last round waits for every figure
    rows = written()
    assert [r["round"] for r in rows] == [1, 2, 3] and [r["attack_leaked"] for r in rows] == [1, 2, 3]
    assert list(rows[0])[-3:] == ["loss", "accuracy", "seconds"]  # the figures sit where the hook's would
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.round == 3 and float(ckpt.weights[0][0]) == 3.0 and len(ckpt.state["0:RecordingStrategy"]["rows"]) == 3
    assert (tmp_path / "summary.json").exists()


def test_the_checkpoint_stays_at_the_last_written_row_with_that_rounds_weights(tmp_path):
    from strategies.checkpoint import ResumableStrategy, load_checkpoint
    from fl_defense.config import parse_run_config

    late = Late()
    top = ResumableStrategy(RecordingStrategy(late, tmp_path, num_rounds=4),
                            parse_run_config({"num-server-rounds": 4}), tmp_path)
    for r in (1, 2, 3):
        top.configure_fit(r, None, None)
        top.aggregate_fit(r, [answer(0, 1.0)], [])
        late.ready.add(1)
        top.evaluate(r, ndarrays_to_parameters([np.full(2, float(r))]))
    ckpt = load_checkpoint(tmp_path)  # rounds 2 and 3 wait: the checkpoint is round 1's
    assert ckpt.round == 1 and float(ckpt.weights[0][0]) == 1.0
    assert [row["round"] for row in ckpt.state["0:RecordingStrategy"]["rows"]] == [1]
