"""The honest-but-curious server: a strategy wrapper that runs gradient inversion on
intercepted uploads, in the style of Flower's DP wrappers (it composes with ANY strategy).

Every ``attack-every`` rounds, before the inner strategy aggregates, :class:`AttackHook`
takes the uploads of ``attack-clients`` clients (the lowest client ids that uploaded),
passes every upload on unchanged, and attacks the chosen ones:

* **attack side** (:mod:`attacks.threat`, :mod:`attacks.inversion`): it knows only what
  the server has -- the global weights it sent, the upload, the architecture, the public
  training facts (lr, local steps, batch size) and the defense's name (for the ``aware``
  attacker).  It recovers ``(global - upload) / lr`` and inverts it.
* **scoring side** (:class:`TrainingImageOracle`, :mod:`attacks.scoring`): only to
  *measure* the leak, the simulation re-derives the images the client trained on this
  round (its partition and seeded batches) and scores each reconstruction against them.
  The oracle's images never reach the attack.

It adds to the round's row in ``metrics.jsonl``: ``attack_ssim_mean``, ``attack_ssim_max``,
``attack_ssim_adjusted_mean``, ``attack_label_acc``, ``attack_leaked`` (count),
``attack_targets``, ``attack_failed``, ``attack_seconds``, ``attack_threat_model``,
``attacker`` and ``attack_objective``, and saves ``attack/round-NNN.png``
(truth | reconstruction | brightness-adjusted).  When ``attack-every = 0`` the wrapper
is not installed at all, so it costs nothing.
"""

from __future__ import annotations

import time
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import Strategy
from flwr.supercore import log

from attacks.inversion import invert_gradients
from attacks.scoring import score
from attacks.threat import attack_config, observed_gradient, parameters_from_state, threat_model
from fl_defense.config import ExperimentConfig
from fl_defense.plots import reconstruction_grid
from fl_defense.protocol import client_id_of, client_order
from fl_defense.task import client_indices, examples_used, load_data, new_model, round_batches, select_device
from strategies.wrapper import StrategyWrapper


class TrainingImageOracle:
    """For scoring only: the images (and labels) client ``c`` trained on in round ``r``."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.train, _ = load_data(cfg)

    def images(self, client_id: int, server_round: int) -> tuple[np.ndarray, np.ndarray]:
        idx = client_indices(self.cfg, client_id)
        used = idx[examples_used(round_batches(self.cfg, len(idx), client_id, server_round))]
        return self.train.images[used], self.train.labels[used]


class AttackHook(StrategyWrapper):
    def __init__(self, inner: Strategy, cfg: ExperimentConfig, out_dir: str | Path) -> None:
        super().__init__(inner)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.model = new_model(cfg)
        train, _ = load_data(cfg)
        self.input_shape = tuple(train.images.shape[1:])
        self.num_classes = train.num_classes
        self.threat = threat_model(cfg.local_steps, cfg.batch_size)
        self.attack_config = attack_config(cfg, device=str(select_device()))
        self.oracle = TrainingImageOracle(cfg)
        self._global: list[np.ndarray] | None = None

    def configure_fit(self, server_round, parameters, client_manager):
        self._global = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        figures = {}
        if server_round % self.cfg.attack_every == 0 and results and self._global is not None:
            try:
                figures = self.attack(server_round, results)
            except Exception as exc:  # an attack never stops the federation
                log(WARNING, "round %s: the attack hook failed: %r", server_round, exc)
                figures = {"attack_error": repr(exc)}
        return self.aggregate_inner(server_round, results, failures, figures)

    # ------------------------------------------------------------------ attack side
    def _targets(self, results):
        chosen = sorted(results, key=lambda r: client_order(r[1].metrics, r[0].cid))
        return chosen[: self.cfg.attack_clients]

    def attack(self, server_round, results) -> dict:
        start = time.perf_counter()
        chosen = self._targets(results)
        client_ids = [client_id_of(res.metrics) for _, res in chosen]
        observed = [observed_gradient(self.model, self._global, parameters_to_ndarrays(res.parameters),
                                      self.cfg.lr) for _, res in chosen]
        params = parameters_from_state(self.model, self._global)
        result = invert_gradients(self.model, observed, self.input_shape, self.num_classes,
                                  self.attack_config, params=params)
        attack_seconds = time.perf_counter() - start
        # ------------------------------------------------------------ scoring side
        truth_sets, truth_labels = zip(*(self.oracle.images(c, server_round) for c in client_ids))
        scores = score(list(truth_sets), list(truth_labels), [im[None] for im in result.images],
                       [lab[None] for lab in result.labels], self.cfg.leak_threshold)
        row = scores.summary(prefix="attack_")
        row.update({"attack_targets": len(client_ids), "attack_failed": int(result.failed.sum()),
                    "attack_seconds": round(attack_seconds, 3), "attack_threat_model": self.threat,
                    "attacker": self.cfg.attacker, "attack_objective": self.attack_config.objective})
        captions = [f"client {client_ids[c]}: ssim {s:.2f} / adj {a:.2f}"
                    for c, s, a in zip(scores.client, scores.ssim, scores.ssim_adjusted)]
        reconstruction_grid(self.out_dir / "attack" / f"round-{server_round:03d}.png", scores.truths,
                            scores.recons, scores.adjusted, captions,
                            title=f"round {server_round}, defense {self.cfg.defense}, {self.cfg.attacker} attacker")
        return row
