"""A strategy that wraps another strategy and delegates everything to it.

The pattern of Flower's DP wrappers (``DifferentialPrivacyClientSideFixedClipping``):
a wrapper composes with ANY inner ``flwr.server.strategy.Strategy`` -- ours or Flower's
own -- and overrides only the steps it cares about.

A wrapper reports its figures of a round through the one interface Flower gives a
strategy for it: the metrics mapping that ``aggregate_fit`` returns.  It adds its own keys
to what the inner strategy returned (:meth:`StrategyWrapper.aggregate_inner`), and the
recorder, outermost, writes them to the round's row.
"""

from __future__ import annotations

from typing import Any, Mapping

from flwr.server.strategy import Strategy


def stack_layers(strategy: Strategy) -> list[Strategy]:
    """The strategy and every strategy it wraps (through ``.inner``), outermost first."""
    layers = [strategy]
    while isinstance(getattr(layers[-1], "inner", None), Strategy):
        layers.append(layers[-1].inner)
    return layers


class StrategyWrapper(Strategy):
    """Delegates every ``Strategy`` method to ``inner``."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__()
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    def aggregate_inner(self, server_round, results, failures, figures: Mapping[str, Any]):
        """The inner strategy's aggregate of ``results`` (``None`` when there are none), with
        this wrapper's ``figures`` added to the metrics it returns."""
        if results:
            parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        else:
            parameters, metrics = None, {}
        return parameters, {**(metrics or {}), **figures}

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)
