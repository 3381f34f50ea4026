"""Build the server's strategy stack from an :class:`~fl_defense.config.ExperimentConfig`.

``strategy = "fl-defense"`` gives :class:`~strategies.aggregation.RobustAggregation` with the
configured ``aggregation`` (mean or median); ``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``
(``trim-beta``) and ``Krum`` (``krum-malicious``) are Flower's own.  Around the base
strategy, innermost first: upload validation, Flower's DP wrapper (``dp-strategy``), the
attack hook (when ``attack-every > 0``), client dropout, seeded client sampling, privacy
accounting (with a Gaussian mechanism), the per-round recorder, the SecAgg+ decoder (with
``secure-aggregation``) and, outermost, the round offset and checkpoint of a resumable run:
``Resumable(SecAggDecoder(Recorder(Accounting(SeededSampling(Dropout(Hook(DPWrapper(Validating(base)))))))))``.
The hook sits outside the DP wrapper so that it sees each upload as the server receives it
(``strategies/central_dp.py``); the accountant outside dropout and validation, so that it
counts every upload the server received; the decoder outside the rest, so that every layer
(the recorder's counts too) sees what it sees in a run without SecAgg+; the resumable
layer outside everything, because it owns the round numbers.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

from flwr.common import ndarrays_to_parameters
from flwr.server.strategy import Strategy

from fl_defense import protocol as msg
from fl_defense.config import ExperimentConfig
from fl_defense.strategy_catalogue import STRATEGIES
from fl_defense.task import evaluate_model, get_weights, load_data, new_model, select_device, set_weights
from strategies.accounting import PrivacyAccountingStrategy, accounted_mechanism
from strategies.central_dp import wrap_central_dp
from strategies.checkpoint import Checkpoint, ResumableStrategy, restore_stack_state
from strategies.dropout import DropoutStrategy
from strategies.recorder import RecordingStrategy
from strategies.sampling import SeededSampling
from strategies.validation import ValidatingStrategy


def _round_config(server_round: int) -> dict:
    return {msg.SERVER_ROUND: server_round}


def base_strategy(cfg: ExperimentConfig, initial_weights, evaluate_fn: Callable) -> Strategy:
    """The aggregation strategy named by ``cfg.strategy`` (no wrappers), built by its registry
    entry's builder (:data:`fl_defense.strategy_catalogue.STRATEGIES`)."""
    common = dict(
        fraction_fit=cfg.fraction_fit,
        fraction_evaluate=cfg.fraction_evaluate,
        min_fit_clients=1,
        min_evaluate_clients=1,
        min_available_clients=cfg.num_clients,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=_round_config,
        on_evaluate_config_fn=_round_config,
        initial_parameters=ndarrays_to_parameters(initial_weights),
        accept_failures=True,
    )
    return resolve_builder(STRATEGIES.get(cfg.strategy).builder)(cfg, common)


def resolve_builder(reference: str) -> Callable:
    """The callable a registry entry names as ``"module:attribute"`` (``ValueError`` naming a
    reference that does not resolve)."""
    module, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"strategy builder {reference!r} cannot be imported: {exc}") from None


def build_strategy(cfg: ExperimentConfig, out_dir: Path, checkpoint: Checkpoint | None = None) -> Strategy:
    """The full strategy stack of a run, with central evaluation on the test split; with
    a ``checkpoint``, the stack of the run resumed after its round (its weights, its
    state, its round offset)."""
    train, test = load_data(cfg)
    model = new_model(cfg, train)
    device = select_device()
    weights = checkpoint.weights if checkpoint else get_weights(model)

    def evaluate_fn(server_round, parameters, config):
        set_weights(model, parameters)
        loss, acc = evaluate_model(model, test.images, test.labels, device)
        return loss, {msg.ACCURACY: acc}

    strategy: Strategy = ValidatingStrategy(base_strategy(cfg, weights, evaluate_fn),
                                            [w.shape for w in weights])
    strategy = wrap_central_dp(cfg, strategy)
    if cfg.attack_every > 0:
        from strategies.hook import AttackHook

        strategy = AttackHook(strategy, cfg, out_dir)
    strategy = SeededSampling(DropoutStrategy(strategy), cfg.seed)
    mechanism = accounted_mechanism(cfg)
    if mechanism is not None:
        strategy = PrivacyAccountingStrategy(strategy, mechanism[0], cfg.dp_delta, cfg.dp_neighbouring,
                                             mechanism[1])
    strategy = RecordingStrategy(strategy, out_dir, cfg.num_server_rounds)
    if cfg.secure_aggregation:
        from strategies.secagg import SecAggDecoder

        strategy = SecAggDecoder(strategy)
    if checkpoint is None:
        return ResumableStrategy(strategy, cfg, out_dir)
    resumed = ResumableStrategy(strategy, cfg, out_dir, start=checkpoint.round)
    restore_stack_state(resumed.inner, checkpoint.state, Path(out_dir))
    return resumed
