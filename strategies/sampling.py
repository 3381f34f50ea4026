"""Seeded client sampling: the same seed samples the same clients (partition ids) each round.

Flower's strategies sample through ``client_manager.sample(num_clients, ...)``, and
Flower's ``SimpleClientManager`` draws with the unseeded :mod:`random` module among node
ids that are themselves random, so a run with ``fraction-fit < 1`` is not reproducible.
:class:`SeededSampling` wraps ANY strategy and hands its ``configure_fit`` /
``configure_evaluate`` a :class:`SeededClientManager` instead, which

1. learns each node's partition id once, by asking the client
   (``get_properties`` -> :data:`fl_defense.protocol.PARTITION_ID`), in parallel, the
   first time a strict subset of the clients is asked for;
2. orders the available nodes by partition id and draws ``num_clients`` of them without
   replacement with ``numpy.random.default_rng([seed, round, SeedStream.SAMPLING])``
   (``[..., SAMPLING, 1]`` for federated evaluation).

Asked for every available client (``fraction-fit = 1``), it returns them all without
asking anything.  When a strict subset was sampled, the wrapper adds
``clients_sampled`` (the partition ids, comma-separated, ascending) to the metrics that
``aggregate_fit`` returns, so the row in ``metrics.jsonl`` says who trained.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from logging import WARNING

import numpy as np
from flwr.common import Code, GetPropertiesIns
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy
from flwr.supercore import log

from fl_defense.protocol import PARTITION_ID, SeedStream
from strategies.wrapper import StrategyWrapper

SAMPLED = "clients_sampled"


class SeededClientManager(ClientManager):
    """A view of ``inner`` whose :meth:`sample` is seeded and draws partition ids."""

    def __init__(self, inner: ClientManager, partition_of, rng: np.random.Generator) -> None:
        self.inner = inner
        self.partition_of = partition_of  # list[ClientProxy] -> {cid: partition id}
        self.rng = rng
        self.sampled: tuple[int, ...] | None = None  # partition ids, when a strict subset

    def num_available(self) -> int:
        return self.inner.num_available()

    def register(self, client) -> bool:
        return self.inner.register(client)

    def unregister(self, client) -> None:
        self.inner.unregister(client)

    def all(self):
        return self.inner.all()

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        return self.inner.wait_for(num_clients, timeout)

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion=None):
        self.inner.wait_for(num_clients if min_num_clients is None else min_num_clients)
        available = [p for p in self.inner.all().values() if criterion is None or criterion.select(p)]
        if num_clients > len(available):
            log(WARNING, "seeded sampling: %s clients asked for, %s available", num_clients, len(available))
            return []
        if num_clients == len(available):
            return available
        ids = self.partition_of(available)
        known = sorted((pid, p.cid, p) for p in available if (pid := ids.get(p.cid)) is not None)
        if num_clients > len(known):
            log(WARNING, "seeded sampling: only %s clients told their partition id", len(known))
            return []
        picks = np.sort(self.rng.choice(len(known), size=num_clients, replace=False))
        self.sampled = tuple(known[i][0] for i in picks)
        return [known[i][2] for i in picks]


class SeededSampling(StrategyWrapper):
    """Seeded, partition-id based client sampling for any inner strategy."""

    def __init__(self, inner: Strategy, seed: int) -> None:
        super().__init__(inner)
        self.seed = int(seed)
        self._partition: dict[str, int] = {}  # node (proxy cid) -> partition id, learned once
        self._sampled: dict[int, tuple[int, ...]] = {}  # round -> partition ids sampled for fit

    def partition_ids(self, proxies) -> dict[str, int]:
        """``{cid: partition id}`` of ``proxies``, asking the nodes not asked before."""
        unknown = [p for p in proxies if p.cid not in self._partition]
        if unknown:
            with ThreadPoolExecutor(max_workers=min(32, len(unknown))) as pool:
                futures = [(p, pool.submit(p.get_properties, GetPropertiesIns(config={}), None, 0))
                           for p in unknown]
            for proxy, future in futures:
                try:
                    res = future.result()
                    if res.status.code != Code.OK or PARTITION_ID not in res.properties:
                        raise RuntimeError(f"status {res.status.code}, properties {res.properties}")
                    self._partition[proxy.cid] = int(res.properties[PARTITION_ID])
                except Exception as exc:  # that node cannot be sampled; the others can
                    log(WARNING, "seeded sampling: node %s did not tell its partition id: %r", proxy.cid, exc)
        return {p.cid: self._partition[p.cid] for p in proxies if p.cid in self._partition}

    def _manager(self, client_manager, server_round: int, *stream: int) -> SeededClientManager:
        rng = np.random.default_rng([self.seed, server_round, SeedStream.SAMPLING, *stream])
        return SeededClientManager(client_manager, self.partition_ids, rng)

    def configure_fit(self, server_round, parameters, client_manager):
        manager = self._manager(client_manager, server_round)
        instructions = self.inner.configure_fit(server_round, parameters, manager)
        if manager.sampled is not None:
            self._sampled[server_round] = manager.sampled
        return instructions

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, self._manager(client_manager, server_round, 1))

    def aggregate_fit(self, server_round, results, failures):
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        sampled = self._sampled.pop(server_round, None)
        if sampled is None:
            return parameters, metrics
        return parameters, {**(metrics or {}), SAMPLED: ",".join(str(c) for c in sampled)}
