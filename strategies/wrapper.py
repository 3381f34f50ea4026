"""A strategy that wraps another strategy and delegates everything to it.

The pattern of Flower's DP wrappers (``DifferentialPrivacyClientSideFixedClipping``):
a wrapper composes with ANY inner ``flwr.server.strategy.Strategy`` -- ours or Flower's
own -- and overrides only the steps it cares about.
"""

from __future__ import annotations

from flwr.server.strategy import Strategy


class StrategyWrapper(Strategy):
    """Delegates every ``Strategy`` method to ``inner``."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__()
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

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
