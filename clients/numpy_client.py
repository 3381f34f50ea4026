"""The defended client: a Flower ``NumPyClient`` that trains on its partition, applies the
configured defense to its update, and uploads (faults injected by :mod:`clients.faults`).

Flower builds a client per message (``client_fn``); the model it trains is built once per
thread and configuration (:func:`client_model`) and reused, since every ``fit`` and
``evaluate`` first loads the whole global state into it (``load_state_dict(strict=True)``)
and ``fit`` makes a fresh optimizer: nothing of one message's model reaches the next."""

from __future__ import annotations

import threading
import time

from flwr.client import NumPyClient

from clients.faults import InjectedFault, byzantine_payload, byzantine_rng, client_dropped, straggle
from fl_defense import protocol as msg
from fl_defense.config import ExperimentConfig
from fl_defense.models import state_kinds
from fl_defense.task import (client_indices, defended_payload, evaluate_model, load_data, new_model,
                             payload_to_weights, select_device, set_weights)


_models = threading.local()


def client_model(cfg: ExperimentConfig, train):
    """The model of a client of ``cfg`` (:func:`fl_defense.task.new_model`), one per thread
    and configuration, reused by every client built in that thread."""
    cache = getattr(_models, "by_config", None)
    if cache is None:
        cache = _models.by_config = {}
    model = cache.get(cfg)
    if model is None:
        if len(cache) >= 4:  # runs of other configs in this process: keep the latest few
            cache.pop(next(iter(cache)))
        model = cache[cfg] = new_model(cfg, train)
    return model


class DefendedClient(NumPyClient):
    """Trains the global model for ``local-steps`` SGD steps, defends, uploads."""

    def __init__(self, cfg: ExperimentConfig, client_id: int) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.device = select_device()
        self.train, _ = load_data(cfg)
        self.indices = client_indices(cfg, client_id)
        self.model = client_model(cfg, self.train)
        self.kinds = state_kinds(self.model)

    def get_properties(self, config):
        """The client's partition id (:data:`fl_defense.protocol.PARTITION_ID`), so that the
        server can sample clients by partition id (:mod:`strategies.sampling`)."""
        return {msg.PARTITION_ID: self.client_id}

    def fit(self, parameters, config):
        start = time.perf_counter()
        cfg, cid = self.cfg, self.client_id
        server_round = int(config.get(msg.SERVER_ROUND, 0))
        if cid in cfg.failing_clients:
            raise InjectedFault(f"client {cid} is configured to fail (fail-clients)")
        if cid in cfg.slow_client_ids:
            straggle(cfg.slow_seconds)
        if cfg.dropout_rate > 0 and client_dropped(cfg.seed, cid, server_round, cfg.dropout_rate):
            return parameters, 0, {msg.CLIENT_ID: cid, msg.DROPPED: 1}
        defended, loss, used = defended_payload(cfg, self.model, self.kinds, parameters,
                                          self.train.images[self.indices], self.train.labels[self.indices],
                                          cid, server_round, self.device)
        malicious = cid < cfg.byzantine_clients
        if malicious:
            defended = byzantine_payload(defended, self.kinds, cfg.byzantine_mode, cfg.byzantine_scale,
                                         byzantine_rng(cfg.seed, cid, server_round))
        upload = payload_to_weights(parameters, defended, self.kinds)
        metrics = {msg.CLIENT_ID: cid, msg.TRAIN_LOSS: loss, msg.MALICIOUS: int(malicious),
                   msg.FIT_SECONDS: time.perf_counter() - start}
        # the number of examples Flower carries in plain text: those trained on this round
        return upload, used, metrics

    def evaluate(self, parameters, config):
        set_weights(self.model, parameters)
        loss, acc = evaluate_model(self.model, self.train.images[self.indices],
                                   self.train.labels[self.indices], self.device)
        return loss, len(self.indices), {msg.ACCURACY: acc, msg.CLIENT_ID: self.client_id}
