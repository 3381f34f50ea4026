"""Client dropout: a wrapper for any strategy that removes the answers of clients that
dropped out this round before the inner strategy aggregates, and reports their count
(``clients_dropped``) in the metrics that ``aggregate_fit`` returns.

Dropout is decided on the client (``dropout-rate``; seeded by seed, client and round, so a
run is reproducible even though Flower's node ids are random): a dropped client answers
without training, flagged ``dropped = 1``, as if its update never arrived.
"""

from __future__ import annotations

from fl_defense.protocol import was_dropped
from strategies.wrapper import StrategyWrapper

DROPPED = "clients_dropped"


class DropoutStrategy(StrategyWrapper):
    def aggregate_fit(self, server_round, results, failures):
        kept = [(p, r) for p, r in results if not was_dropped(r.metrics)]
        return self.aggregate_inner(server_round, kept, failures, {DROPPED: len(results) - len(kept)})
