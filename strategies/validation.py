"""Upload validation: a wrapper for any strategy that rejects malformed uploads (wrong
count or shapes, NaN or Inf values) before the inner strategy aggregates them.

It reports ``clients_rejected`` in the metrics that ``aggregate_fit`` returns; the reasons
go to the log.
"""

from __future__ import annotations

from logging import WARNING
from typing import Sequence

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import Strategy
from flwr.supercore import log

from fl_defense.protocol import client_id_of
from strategies.wrapper import StrategyWrapper

REJECTED = "clients_rejected"


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
    """Drops malformed uploads, counts them (``clients_rejected``), aggregates the rest."""

    def __init__(self, inner: Strategy, shapes: Sequence[tuple]) -> None:
        super().__init__(inner)
        self.shapes = [tuple(s) for s in shapes]

    def aggregate_fit(self, server_round, results, failures):
        kept = []
        for proxy, res in results:
            problem = upload_problem(parameters_to_ndarrays(res.parameters), self.shapes)
            if problem is None:
                kept.append((proxy, res))
            else:
                cid = client_id_of(res.metrics)
                log(WARNING, "round %s: rejected the upload of client %s: %s",
                    server_round, proxy.cid if cid is None else cid, problem)
        return self.aggregate_inner(server_round, kept, failures, {REJECTED: len(results) - len(kept)})
