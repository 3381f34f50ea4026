"""The defended client: a Flower ``NumPyClient`` that trains on its partition, applies the
configured defense to its update, and uploads.

Fault injection for robustness studies lives here too, each switched by the config:
``fail-clients`` (these clients raise in ``fit``), ``dropout-rate`` (a client drops out
of a round with this probability and answers without an update), ``byzantine-clients`` (the first f
client ids upload a malicious update: ``sign-flip``, ``scaled`` or ``random``).
"""

from __future__ import annotations

import time

import numpy as np
from flwr.client import NumPyClient

from fl_defense.config import ExperimentConfig
from fl_defense.defenses import apply_defense, defense_rng
from fl_defense.task import (TRAINABLE, client_indices, evaluate_model, load_data,
                             local_batches, make_payload, new_model, payload_to_weights,
                             select_device, set_weights, get_weights, train_steps)
from fl_defense.models import state_kinds


class InjectedFault(RuntimeError):
    """Raised by a client configured to fail (``fail-clients``)."""


def byzantine_payload(payload: list[np.ndarray], kinds: list[str], mode: str, scale: float,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """A malicious client's payload: the honest update sign-flipped, scaled by ``scale``, or
    replaced by Gaussian noise of ``scale`` times the update's own standard deviation.
    BatchNorm statistics are left honest (an attack on them is a different study)."""
    out = []
    for p, k in zip(payload, kinds):
        if k not in TRAINABLE:
            out.append(p)
        elif mode == "sign-flip":
            out.append(-p)
        elif mode == "scaled":
            out.append(p * scale)
        elif mode == "random":
            out.append(rng.normal(0.0, scale * (float(np.std(p)) + 1e-12), size=p.shape).astype(p.dtype))
        else:
            raise ValueError(f"unknown byzantine mode {mode!r}")
    return out


def client_dropped(seed: int, client_id: int, server_round: int, rate: float) -> bool:
    """Whether a client drops out of a round (probability ``rate``, seeded)."""
    return bool(np.random.default_rng([seed, client_id, server_round, 4]).random() < rate)


class DefendedClient(NumPyClient):
    """Trains the global model for ``local-steps`` SGD steps, defends, uploads."""

    def __init__(self, cfg: ExperimentConfig, client_id: int) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.device = select_device()
        self.train, _ = load_data(cfg)
        self.indices = client_indices(cfg, client_id)
        self.model = new_model(cfg, self.train)
        self.kinds = state_kinds(self.model)
        self.defense = cfg.defense_spec

    def fit(self, parameters, config):
        start = time.perf_counter()
        server_round = int(config.get("server-round", 0))
        if self.client_id in self.cfg.failing_clients:
            raise InjectedFault(f"client {self.client_id} is configured to fail (fail-clients)")
        if self.cfg.dropout_rate > 0 and client_dropped(self.cfg.seed, self.client_id, server_round,
                                                        self.cfg.dropout_rate):
            return parameters, 0, {"client-id": self.client_id, "dropped": 1}
        set_weights(self.model, parameters)
        batches = local_batches(len(self.indices), self.cfg.local_steps, self.cfg.batch_size,
                                self.cfg.seed, self.client_id, server_round)
        images = self.train.images[self.indices]
        labels = self.train.labels[self.indices]
        loss = train_steps(self.model, images, labels, batches, self.cfg.lr, self.device)
        payload = make_payload(parameters, get_weights(self.model), self.kinds)
        defended = apply_defense(self.defense, payload, self.kinds,
                                 defense_rng(self.cfg.seed, self.client_id, server_round))
        malicious = self.client_id < self.cfg.byzantine_clients
        if malicious:
            defended = byzantine_payload(defended, self.kinds, self.cfg.byzantine_mode,
                                         self.cfg.byzantine_scale,
                                         np.random.default_rng([self.cfg.seed, self.client_id, server_round, 2]))
        upload = payload_to_weights(parameters, defended, self.kinds)
        metrics = {"client-id": self.client_id, "train-loss": loss, "malicious": int(malicious),
                   "fit-seconds": time.perf_counter() - start}
        return upload, len(self.indices), metrics

    def evaluate(self, parameters, config):
        set_weights(self.model, parameters)
        loss, acc = evaluate_model(self.model, self.train.images[self.indices],
                                   self.train.labels[self.indices], self.device)
        return loss, len(self.indices), {"accuracy": acc, "client-id": self.client_id}
