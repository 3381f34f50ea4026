"""Element-wise mean or median aggregation.

:class:`RobustAggregation` is a ``FedAvg`` (client sampling, central evaluation, config
functions) whose aggregation is the element-wise **mean** (unweighted: every client counts
once, so that mean and median are compared on equal terms) or the element-wise **median**
of the uploaded weights (Yin et al., 2018, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates").
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from fl_defense.config import AGGREGATIONS
from fl_defense.protocol import client_order


def aggregate_arrays(uploads: Sequence[Sequence[np.ndarray]], how: str) -> list[np.ndarray]:
    """Element-wise ``mean`` or ``median`` over clients, per array, in the arrays' dtype."""
    if how not in AGGREGATIONS:
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
        if aggregation not in AGGREGATIONS:
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
        results = sorted(results, key=lambda r: client_order(r[1].metrics, r[0].cid))
        uploads = [parameters_to_ndarrays(res.parameters) for _, res in results]
        aggregated = aggregate_arrays(uploads, self.aggregation)
        metrics = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for _, r in results])
        return ndarrays_to_parameters(aggregated), metrics


# The builders the strategy registry names (fl_defense.strategy_catalogue): builder(cfg, common).


def build_robust(cfg, common: dict) -> RobustAggregation:
    return RobustAggregation(aggregation=cfg.aggregation, **common)


def build_fedavg(cfg, common: dict) -> FedAvg:
    return FedAvg(**common)


def build_fedmedian(cfg, common: dict) -> FedMedian:
    return FedMedian(**common)


def build_fedtrimmedavg(cfg, common: dict) -> FedTrimmedAvg:
    return FedTrimmedAvg(beta=cfg.trim_beta, **common)


def build_krum(cfg, common: dict) -> Krum:
    return Krum(num_malicious_clients=cfg.krum_malicious, num_clients_to_keep=0, **common)
