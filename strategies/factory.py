"""Build the server's strategy stack from an :class:`~fl_defense.config.ExperimentConfig`.

``strategy = "fl-defense"`` gives :class:`~strategies.robust.RobustAggregation` with the
configured ``aggregation`` (mean or median); ``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``
(``trim-beta``) and ``Krum`` (``krum-malicious``) are Flower's own.  Around the base
strategy, outermost last: upload validation, the attack hook (when ``attack-every > 0``),
client dropout (when ``dropout-rate > 0``) and the per-round recorder.
"""

from __future__ import annotations

from typing import Callable

from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, Strategy

from fl_defense.config import ExperimentConfig
from strategies.robust import RobustAggregation


def base_strategy(cfg: ExperimentConfig, initial_weights, evaluate_fn: Callable) -> Strategy:
    """The aggregation strategy named by ``cfg.strategy`` (no wrappers)."""
    common = dict(
        fraction_fit=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_fit_clients=1,
        min_evaluate_clients=1,
        min_available_clients=cfg.num_clients,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda server_round: {"server-round": server_round},
        on_evaluate_config_fn=lambda server_round: {"server-round": server_round},
        initial_parameters=ndarrays_to_parameters(initial_weights),
        accept_failures=True,
    )
    if cfg.strategy == "fl-defense":
        return RobustAggregation(aggregation=cfg.aggregation, **common)
    if cfg.strategy == "FedAvg":
        return FedAvg(**common)
    if cfg.strategy == "FedMedian":
        return FedMedian(**common)
    if cfg.strategy == "FedTrimmedAvg":
        return FedTrimmedAvg(beta=cfg.trim_beta, **common)
    if cfg.strategy == "Krum":
        return Krum(num_malicious_clients=cfg.krum_malicious, num_clients_to_keep=0, **common)
    raise ValueError(f"unknown strategy {cfg.strategy!r}")
