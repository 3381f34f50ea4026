"""The outermost wrapper: per-round bookkeeping and ``metrics.jsonl``.

It wraps the whole strategy stack, times each round, counts the clients that answered and
failed, merges what the inner layers return from ``aggregate_fit`` (the aggregation's
metrics, ``clients_rejected``, ``clients_dropped``, the attack hook's ``attack_*`` figures)
with the central evaluation, and rewrites ``metrics.jsonl`` atomically after every round
(one JSON object per round; keys with ``-`` are written with ``_``).  When the last round is done it
writes ``summary.json`` with ``"status": "completed"`` (:meth:`RecordingStrategy.finish`), the
last file of a run: when a stack also checkpoints, the checkpointing layer calls it after the
last checkpoint, so a launcher may stop the run's processes as soon as it appears.

A round whose figures come late (the attack hook hands its attack to a worker process:
``attack-workers``) waits until they are there; rows are written in round order, each when
it and every earlier row are complete, all of them by the end of the last round
(:attr:`RecordingStrategy.recorded_round` is the last round written).

Its rows are the one state of the stack that lasts from round to round: ``state_dict`` /
``load_state_dict`` hand them to the checkpoint (:mod:`strategies.checkpoint`), and a
resumed run's recorder goes on from them.
"""

from __future__ import annotations

import math
import time
from collections import deque
from logging import INFO
from pathlib import Path
from typing import Any

from flwr.server.strategy import Strategy
from flwr.supercore import log

from fl_defense import protocol as msg
from fl_defense.io import write_json, write_jsonl
from strategies.wrapper import StrategyWrapper, stack_layers


class RecordingStrategy(StrategyWrapper):
    def __init__(self, inner: Strategy, out_dir: str | Path, num_rounds: int) -> None:
        super().__init__(inner)
        self.out_dir = Path(out_dir)
        self.num_rounds = num_rounds
        self.rows: list[dict[str, Any]] = []
        self._pending: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        #: set by a layer that calls :meth:`finish` itself (after its own last write)
        self.finish_deferred = False
        #: rows evaluated but not written, each with the layers whose figures it still needs
        self._waiting: deque[tuple[dict[str, Any], list[Strategy]]] = deque()
        self._late = [layer for layer in stack_layers(inner) if hasattr(layer, "has_late_figures")]

    @property
    def recorded_round(self) -> int:
        """The last round whose row is written (0: none yet)."""
        return int(self.rows[-1]["round"]) if self.rows else 0

    def state_dict(self) -> dict[str, Any]:
        """The rows recorded so far (what a resumed run goes on from)."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint's rows, and rewrite ``metrics.jsonl`` to hold exactly
        them (a row written after the checkpoint, by a run killed before the next
        checkpoint, is dropped: that round runs again)."""
        self.rows = [dict(r) for r in state["rows"]]
        write_jsonl(self.out_dir / "metrics.jsonl", self.rows)
        if len(self.rows) < self.num_rounds:
            (self.out_dir / "summary.json").unlink(missing_ok=True)

    def configure_fit(self, server_round, parameters, client_manager):
        self._t0 = time.perf_counter()
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self._pending = {"round": server_round}
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        answered = [r for _, r in results if not msg.was_dropped(r.metrics)]
        self._pending.update({
            "clients_ok": len(answered),
            "clients_failed": len(failures),
            "train_loss": _mean([r.metrics.get(msg.TRAIN_LOSS) for r in answered]),
        })
        self._pending.update(_row_keys(metrics or {}))
        if parameters is None:
            self._pending["aggregated"] = False
        return parameters, metrics

    def evaluate(self, server_round, parameters):
        result = self.inner.evaluate(server_round, parameters)
        if server_round == 0:
            return result
        row = dict(self._pending) if self._pending.get("round") == server_round else {"round": server_round}
        if result is not None:
            loss, metrics = result
            row["loss"] = float(loss)
            row["accuracy"] = float(metrics.get("accuracy", float("nan")))
        row["seconds"] = round(time.perf_counter() - self._t0, 3)
        self._waiting.append((row, [layer for layer in self._late if layer.has_late_figures(server_round)]))
        self._write_complete_rows(wait=server_round >= self.num_rounds)
        if not self.finish_deferred:
            self.finish()
        return result

    def _write_complete_rows(self, wait: bool) -> None:
        """Write the waiting rows, in order, while the first one's late figures are there (with
        ``wait``: all of them, waiting for their figures)."""
        written = False
        while self._waiting:
            row, late = self._waiting[0]
            if not wait and not all(layer.figures_ready(row["round"]) for layer in late):
                break
            tail = {k: row.pop(k) for k in ("loss", "accuracy", "seconds") if k in row}
            for layer in late:
                row.update(_row_keys(layer.take_figures(row["round"])))
            row.update(tail)
            self._waiting.popleft()
            self.rows.append(row)
            written = True
            if wait:  # rows come one by one here: show each
                write_jsonl(self.out_dir / "metrics.jsonl", self.rows)
            log(INFO, "fl-defense round %s: %s", row["round"],
                " ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "round"))
        if written and not wait:
            write_jsonl(self.out_dir / "metrics.jsonl", self.rows)

    def finish(self) -> None:
        """Write ``summary.json`` once the last round's row is recorded (else nothing)."""
        if self.rows and self.rows[-1].get("round") == self.num_rounds:
            write_json(self.out_dir / "summary.json", {"status": "completed", "rounds": self.num_rounds,
                                                        "final": self.rows[-1]})


def _row_keys(metrics) -> dict[str, Any]:
    """``metrics`` with the keys a row uses (``-`` written ``_``)."""
    return {k.replace("-", "_"): v for k, v in metrics.items()}


def _mean(values):
    """Mean of the values that are there; ``math.fsum`` makes it independent of the order in
    which the clients' answers arrived (a plain sum differs in the last bits)."""
    vals = [float(v) for v in values if v is not None]
    return math.fsum(vals) / len(vals) if vals else None


def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)
