"""Element-wise mean or median aggregation, upload validation and client dropout.

* :class:`RobustAggregation` -- a ``FedAvg`` (client sampling, central evaluation,
  config functions) whose aggregation is the element-wise **mean** (unweighted: every
  client counts once, so that mean and median are compared on equal terms) or the
  element-wise **median** of the uploaded weights (Yin et al., 2018, "Byzantine-Robust
  Distributed Learning: Towards Optimal Statistical Rates").
* :class:`ValidatingStrategy` -- a wrapper for any strategy: uploads with NaN or Inf
  values or the wrong shapes are dropped (and counted) before the inner strategy sees them.
* :class:`DropoutStrategy` -- a wrapper for any strategy: the answers of clients that
  dropped out this round are removed before aggregation and counted.
"""

from __future__ import annotations

from logging import WARNING
from typing import Sequence

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, Strategy
from flwr.supercore import log

from strategies.wrapper import StrategyWrapper


def aggregate_arrays(uploads: Sequence[Sequence[np.ndarray]], how: str) -> list[np.ndarray]:
    """Element-wise ``mean`` or ``median`` over clients, per array, in the arrays' dtype."""
    if how not in ("mean", "median"):
        raise ValueError(f"unknown aggregation {how!r}; choose mean or median")
    if not uploads:
        raise ValueError("no uploads to aggregate")
    reduce = np.mean if how == "mean" else np.median
    out = []
    for layer in zip(*uploads):
        stacked = np.stack([np.asarray(a, dtype=np.float64) for a in layer])
        value = reduce(stacked, axis=0)
        dtype = np.asarray(layer[0]).dtype
        if np.issubdtype(dtype, np.integer):
            value = np.rint(value)
        out.append(value.astype(dtype))
    return out


class RobustAggregation(FedAvg):
    """FedAvg with element-wise mean or median aggregation of the uploaded weights."""

    def __init__(self, *, aggregation: str = "mean", **fedavg_kwargs) -> None:
        if aggregation not in ("mean", "median"):
            raise ValueError(f"unknown aggregation {aggregation!r}; choose mean or median")
        super().__init__(**fedavg_kwargs)
        self.aggregation = aggregation

    def __repr__(self) -> str:
        return f"RobustAggregation(aggregation={self.aggregation})"

    def aggregate_fit(self, server_round, results, failures):
        if not results:
            return None, {}
        if not self.accept_failures and failures:
            return None, {}
        # A fixed order (by client id) keeps float sums, and so runs, reproducible.
        results = sorted(results, key=lambda r: (r[1].metrics.get("client-id", -1), r[0].cid))
        uploads = [parameters_to_ndarrays(res.parameters) for _, res in results]
        aggregated = aggregate_arrays(uploads, self.aggregation)
        metrics = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results])
        return ndarrays_to_parameters(aggregated), metrics


def upload_problem(arrays: Sequence[np.ndarray], shapes: Sequence[tuple]) -> str | None:
    """Why an upload is unacceptable (wrong count/shape, NaN/Inf), or ``None``."""
    if len(arrays) != len(shapes):
        return f"{len(arrays)} arrays instead of {len(shapes)}"
    for i, (a, shape) in enumerate(zip(arrays, shapes)):
        if tuple(a.shape) != tuple(shape):
            return f"array {i} has shape {tuple(a.shape)} instead of {tuple(shape)}"
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            return f"array {i} has NaN or Inf values"
    return None


class ValidatingStrategy(StrategyWrapper):
    """Rejects malformed uploads before the inner strategy aggregates them.

    The count of rejected uploads of the last round is in ``last_rejected``; the reasons
    go to the log.
    """

    def __init__(self, inner: Strategy, shapes: Sequence[tuple]) -> None:
        super().__init__(inner)
        self.shapes = [tuple(s) for s in shapes]
        self.last_rejected = 0

    def aggregate_fit(self, server_round, results, failures):
        kept = []
        self.last_rejected = 0
        for proxy, res in results:
            problem = upload_problem(parameters_to_ndarrays(res.parameters), self.shapes)
            if problem is None:
                kept.append((proxy, res))
            else:
                self.last_rejected += 1
                log(WARNING, "round %s: rejected the upload of client %s: %s",
                    server_round, res.metrics.get("client-id", proxy.cid), problem)
        if not kept:
            return None, {}
        return self.inner.aggregate_fit(server_round, kept, failures)


class DropoutStrategy(StrategyWrapper):
    """Removes the answers of clients that dropped out this round before the inner
    strategy aggregates (and counts them in ``last_dropped``).

    Dropout is decided on the client (``dropout-rate``; seeded by seed, client and round,
    so a run is reproducible even though Flower's node ids are random): a dropped client
    answers without training, flagged ``dropped = 1``, as if its update never arrived.
    """

    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner)
        self.last_dropped = 0

    def aggregate_fit(self, server_round, results, failures):
        kept = [(p, r) for p, r in results if not int(r.metrics.get("dropped", 0))]
        self.last_dropped = len(results) - len(kept)
        if not kept:
            return None, {}
        return self.inner.aggregate_fit(server_round, kept, failures)
