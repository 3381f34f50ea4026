"""Privacy accounting: a wrapper for any strategy that counts, per client, the rounds in
which it released an update, and reports the worst client's (epsilon, delta) every round.

The mechanism and the relation are those of :mod:`fl_defense.privacy`: per round, a
Gaussian release of sensitivity-to-noise ratio ``s / Z``, composed over the rounds in which
the client uploaded (a client that dropped out or failed released nothing that round).
It adds to the metrics that ``aggregate_fit`` returns, hence to the round's row:

* ``epsilon`` -- the largest epsilon over the clients, at ``dp_delta`` (``None`` when the
  noise multiplier is 0: no finite epsilon);
* ``epsilon_rdp`` -- the same releases through Flower's RDP accountant (an upper bound);
* ``dp_delta``, ``dp_releases`` (the worst client's number of releases so far) and
  ``epsilon_scope``: ``local`` for the ``dp-gaussian`` defense (each upload is noised on
  the client: the guarantee holds against the server itself), ``central`` for Flower's DP
  wrappers (the noise is added to the aggregate: the guarantee holds against whoever sees
  the aggregated model, *not* against the server, which sees the un-noised uploads).

For ``central``, the aggregate is the mean of n clipped updates with noise of standard
deviation ``Z C / n`` (Flower's ``compute_stdv``); one client moves that mean by at most
``s C / n``, so the ratio is ``s / Z`` again.  This holds for an unweighted mean over the
``n`` sampled clients (``strategy = fl-defense``, ``aggregation = mean``); an example-weighted
mean (FedAvg, SecAgg+) gives a client of weight share w a sensitivity ``s C w`` instead.

It sits outside validation and dropout (it must see every upload the server received,
including the ones it rejects afterwards).
"""

from __future__ import annotations

import math
from collections import Counter

from flwr.server.strategy import Strategy

from fl_defense.config import ExperimentConfig
from fl_defense.privacy import gaussian_epsilon, gaussian_epsilon_rdp
from fl_defense.protocol import client_id_of, was_dropped
from strategies.wrapper import StrategyWrapper


def accounted_mechanism(cfg: ExperimentConfig) -> tuple[float, str] | None:
    """``(noise multiplier, scope)`` of the run's Gaussian mechanism, or ``None`` without one."""
    if cfg.defense.name == "dp-gaussian":
        return float(cfg.defense.value), "local"
    if cfg.dp_strategy != "none":
        return float(cfg.dp_noise_multiplier), "central"
    return None


class PrivacyAccountingStrategy(StrategyWrapper):
    """Reports the worst client's epsilon at ``delta`` after every round."""

    def __init__(self, inner: Strategy, noise_multiplier: float, delta: float, neighbouring: str,
                 scope: str) -> None:
        super().__init__(inner)
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.neighbouring = neighbouring
        self.scope = scope
        self.releases: Counter = Counter()

    def aggregate_fit(self, server_round, results, failures):
        for proxy, res in results:
            if not was_dropped(res.metrics):
                cid = client_id_of(res.metrics)
                self.releases[proxy.cid if cid is None else cid] += 1
        return self.aggregate_inner(server_round, results, failures, self.figures())

    def state_dict(self) -> dict:
        """The releases per client (JSON-able), so that a resumed run keeps accounting them."""
        return {"releases": {str(k): v for k, v in sorted(self.releases.items(), key=lambda kv: str(kv[0]))}}

    def load_state_dict(self, state: dict) -> None:
        self.releases = Counter({int(k) if str(k).lstrip("-").isdigit() else k: int(v)
                                 for k, v in state.get("releases", {}).items()})

    def figures(self) -> dict:
        worst = max(self.releases.values(), default=0)
        eps = gaussian_epsilon(self.noise_multiplier, worst, self.delta, self.neighbouring)
        eps_rdp = gaussian_epsilon_rdp(self.noise_multiplier, worst, self.delta, self.neighbouring)
        return {"epsilon": None if math.isinf(eps) else eps,
                "epsilon_rdp": None if math.isinf(eps_rdp) else eps_rdp,
                "dp_delta": self.delta, "dp_releases": worst, "epsilon_scope": self.scope}
