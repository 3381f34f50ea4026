"""The strategy registry: every aggregation strategy a run can name (config key ``strategy``).

An entry says what the configuration and the reports need to know about a strategy -- its
summary, the config keys it reads, and whether it needs each client's upload (which
SecAgg+ never hands the server) -- and names its builder as ``"module:function"``, which
:func:`strategies.factory.base_strategy` imports when a run builds the strategy (the same
form as Flower's component references and Python entry points).  A builder is called as
``builder(cfg, common)`` with the run's :class:`~fl_defense.config.ExperimentConfig` and the
keyword arguments every Flower strategy of a run shares, and returns a Flower ``Strategy``.
Third-party packages add strategies through the entry-point group ``fl_defense.strategies``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl_defense.registry import Registry

__all__ = ["StrategyEntry", "STRATEGIES"]


@dataclass(frozen=True)
class StrategyEntry:
    """A registry entry.

    Attributes
    ----------
    name : the name users write (config key ``strategy``).
    builder : ``"module:function"``, the builder (see the module docstring).
    summary : one line for help texts.
    keys : the config keys it reads besides the shared ones.
    individual_uploads : why it needs each client's upload (``None`` when the sum of the
        uploads is enough): SecAgg+ is refused with such a strategy, naming the reason.
    """

    name: str
    builder: str
    summary: str
    keys: tuple[str, ...] = ()
    individual_uploads: str | None = None


STRATEGIES: Registry[StrategyEntry] = Registry("strategy", StrategyEntry, (
    StrategyEntry("fl-defense", "strategies.aggregation:build_robust",
                  "FedAvg whose aggregation is the unweighted element-wise mean or median (key aggregation)",
                  keys=("aggregation",)),
    StrategyEntry("FedAvg", "strategies.aggregation:build_fedavg", "Flower's FedAvg (mean weighted by examples)"),
    StrategyEntry("FedMedian", "strategies.aggregation:build_fedmedian", "Flower's FedMedian",
                  individual_uploads="FedMedian takes the element-wise median of the uploads"),
    StrategyEntry("FedTrimmedAvg", "strategies.aggregation:build_fedtrimmedavg",
                  "Flower's FedTrimmedAvg (key trim-beta)", keys=("trim-beta",),
                  individual_uploads="FedTrimmedAvg trims the largest and smallest uploads"),
    StrategyEntry("Krum", "strategies.aggregation:build_krum", "Flower's Krum (key krum-malicious)",
                  keys=("krum-malicious",),
                  individual_uploads="Krum scores each upload by its distances to the others"),
), entry_point_group="fl_defense.strategies")
"""name -> :class:`StrategyEntry`."""
