"""The honest-but-curious server: a strategy wrapper that runs gradient inversion on
intercepted uploads, in the style of Flower's DP wrappers (it composes with ANY strategy).

Every ``attack-every`` rounds, before the inner strategy aggregates, :class:`AttackHook`
takes the uploads of ``attack-clients`` clients (the lowest client ids that uploaded),
passes every upload on unchanged, and attacks the chosen ones:

* **attack side** (:class:`attacks.threat.ThreatModel`, :func:`attacks.updates.invert_updates`):
  it knows only what the server has -- the global weights it sent, the upload, the
  architecture, the public training facts of the run's config (lr, local steps, batch
  size), the number of examples each client reports with its upload
  (``FitRes.num_examples``) and the defense's name (for the ``aware`` attacker).  It
  simulates each client's K local steps on N dummy images (labels inferred from the
  upload) and matches the upload, all chosen clients in one vectorised call.
* **scoring side** (:class:`TrainingImageOracle`, :mod:`fl_defense.scoring`): only to
  *measure* the leak, the simulation re-derives the images the client trained on this
  round (its partition, :func:`fl_defense.task.round_batches` and
  :func:`fl_defense.task.examples_used`) and matches each client's N reconstructions
  one-to-one to its N images, against the public decoy pool (config keys ``decoys`` and
  ``decoy-pool-size``: by default the data set's test split).  The oracle's images never
  reach the attack.

It adds to the round's row in ``metrics.jsonl``: ``attack_ssim_mean``, ``attack_ssim_max``,
``attack_ssim_adjusted_mean``, ``attack_ssim_decoy_max_mean``, ``attack_psnr_mean``,
``attack_label_acc`` (per image, after the matching), ``attack_leaked`` (images the
reconstructions identify among the decoys; ``null`` with ``decoys = "none"``),
``attack_leaked_paper`` (images at adjusted SSIM >= ``leak-threshold``), ``attack_failed``
(images of clients whose attack failed, counted as not leaked), ``attack_images`` (private
images scored), ``attack_targets`` (clients attacked), ``attack_seconds``,
``attack_threat_model`` (``exact``: one step of one image; ``simulated``), ``attacker``,
``attack_objective`` and ``attack_label_source``, and saves ``attack/round-NNN.png`` (truth
| reconstruction | brightness-adjusted) and ``attack/round-NNN.npz`` (the reconstructions,
matched indices, labels and private images: ``run_sim.py rescore`` reads it).  A client whose upload stands for more than
:data:`MAX_IMAGE_STEPS` image-steps (``N * K``) is not attacked (the simulation's cost
grows with it) and is counted in ``attack_skipped``.  Under SecAgg+ (``secure-aggregation``)
every upload is the same aggregate: the hook attacks it once per round, as one target of N
= the sum of the participants' ``num_examples`` images in one step (exact for one local
step without BatchNorm, the only setting the config allows), scored against all their
images (``attack_threat_model = secagg-aggregate``, ``attack_targets = 1``).  When ``attack-every = 0`` the wrapper
is not installed at all, so it costs nothing.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import Strategy
from flwr.supercore import log

from fl_defense.scoring import save_record, score
from attacks.threat import ThreatModel, attack_config
from attacks.updates import invert_updates, update_options
from fl_defense.config import ExperimentConfig
from fl_defense.plots import reconstruction_grid
from fl_defense.protocol import client_id_of, client_order, was_dropped
from fl_defense.task import client_indices, examples_used, load_data, new_model, round_batches, select_device
from strategies.wrapper import StrategyWrapper

MAX_IMAGE_STEPS = 256  # the hook attacks uploads of at most this many images x local steps
#: The file (in the run folder) the hook writes its progress line to while an attack runs.
PROGRESS_FILE = "attack/progress.txt"


class Heartbeat:
    """While it is entered, a daemon thread writes ``<what>: <phase>, <seconds> s`` to a file
    every ``every`` seconds (atomically), so that a launcher can show progress inside a
    round; :meth:`phase` sets the phase.  The file is removed on exit."""

    def __init__(self, path: Path, what: str, every: float = 5.0) -> None:
        import threading

        self.path, self.what, self.every = Path(path), what, every
        self._phase = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def phase(self, text: str) -> None:
        self._phase = text

    def _write(self, elapsed: float) -> None:
        from fl_defense.io import atomic_write_text

        try:
            atomic_write_text(self.path, f"{self.what}: {self._phase}, {elapsed:.0f} s\n")
        except OSError:
            pass

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self.every):
            self._write(time.perf_counter() - start)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def _prepare_quietly(pool, truth_sets, truth_labels) -> None:
    """:meth:`DecoyPool.prepare` for every attacked client; an error is left for the scoring,
    which computes the same values again and reports it where every attack error goes."""
    try:
        for images, labels in zip(truth_sets, truth_labels):
            pool.prepare(images, labels)
    except Exception:
        pass


class TrainingImageOracle:
    """For scoring only: the images (and labels) client ``c`` trained on in round ``r``."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.train, _ = load_data(cfg)

    def images(self, client_id: int, server_round: int) -> tuple[np.ndarray, np.ndarray]:
        idx = client_indices(self.cfg, client_id)
        used = idx[examples_used(round_batches(self.cfg, len(idx), client_id, server_round))]
        return self.train.images[used], self.train.labels[used]


def hook_pool(cfg: ExperimentConfig, input_shape):
    """The decoy pool the config names (key ``decoys``): the data set's test split (``""``),
    a folder, or none (``"none"``)."""
    from fl_defense.decoys import NO_DECOYS, pool_for_dataset, pool_from_folder

    if cfg.decoys == NO_DECOYS:
        return None
    if cfg.decoys:
        return pool_from_folder(cfg.decoys, int(input_shape[-1]), int(input_shape[0]))
    return pool_for_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.decoy_pool_size)


class AttackHook(StrategyWrapper):
    def __init__(self, inner: Strategy, cfg: ExperimentConfig, out_dir: str | Path) -> None:
        super().__init__(inner)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.model = new_model(cfg)
        train, _ = load_data(cfg)
        self.input_shape = tuple(train.images.shape[1:])
        self.num_classes = train.num_classes
        self.attack_config = attack_config(cfg, device=str(select_device()))
        self.oracle = TrainingImageOracle(cfg)
        self.pool = hook_pool(cfg, self.input_shape)
        # the attack may start from public images of the kind: the mean of the (public) decoy pool
        mean = None if self.pool is None else self.pool.images.images.mean(0).astype(np.float32)
        self.options = update_options(cfg, self.model, init_image=mean)
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
    @staticmethod
    def _live(results):
        """The uploads that carry an update (clients that dropped out of the round, or trained
        on nothing, uploaded none), in client-id order."""
        live = [r for r in results if r[1].num_examples > 0 and not was_dropped(r[1].metrics)]
        return sorted(live, key=lambda r: client_order(r[1].metrics, r[0].cid))

    def _targets(self, results):
        """The ``attack-clients`` uploads of the lowest client ids."""
        return self._live(results)[: self.cfg.attack_clients]

    def _aggregate_target(self, results):
        """Under SecAgg+: every live ``FitRes`` carries the same aggregate, the
        ``num_examples``-weighted mean of the uploads.  With one local step each client's
        update is ``-lr`` times the mean gradient of its batch at the global weights, so the
        aggregate is one step of one batch of all the participants' images (N = the sum of
        their ``num_examples``); the config refuses the hook under SecAgg+ otherwise.
        Returns ``([(None, FitRes of the aggregate)], [ThreatModel])``."""
        live = self._live(results)
        if not live:
            return [], []
        n = int(sum(res.num_examples for _, res in live))
        base = ThreatModel.from_config(self.cfg, self._global, parameters_to_ndarrays(live[0][1].parameters), n)
        return live, [dataclasses.replace(base, local_steps=1, batch_size=n)]

    def _truths(self, server_round, chosen, kept) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """For scoring only: the ids of the attacked clients (-1: the SecAgg+ aggregate, one
        target holding every participant's images) and the images and labels of each."""
        if self.cfg.secure_aggregation:
            parts = [self.oracle.images(client_id_of(res.metrics), server_round) for _, res in chosen]
            return [-1], [np.concatenate([p[0] for p in parts])], [np.concatenate([p[1] for p in parts])]
        client_ids = [client_id_of(chosen[i][1].metrics) for i in kept]
        truth_sets, truth_labels = zip(*(self.oracle.images(c, server_round) for c in client_ids))
        return client_ids, list(truth_sets), list(truth_labels)

    def attack(self, server_round, results) -> dict:
        start = time.perf_counter()
        if self.cfg.secure_aggregation:
            chosen, threats = self._aggregate_target(results)
        else:
            chosen = self._targets(results)
            threats = [ThreatModel.from_config(self.cfg, self._global, parameters_to_ndarrays(res.parameters),
                                               res.num_examples) for _, res in chosen]
        if not chosen:
            return {"attack_targets": 0, "attack_skipped": 0}
        kept = [i for i, t in enumerate(threats) if t.num_examples * t.local_steps <= MAX_IMAGE_STEPS]
        skipped = len(threats) - len(kept)
        row = {"attack_targets": len(kept), "attack_skipped": skipped, "attacker": self.cfg.attacker,
               "attack_objective": self.attack_config.objective, "attack_label_source": self.options.labels}
        if not kept:
            log(WARNING, "round %s: no upload small enough to attack (N x K > %s)", server_round, MAX_IMAGE_STEPS)
            return row
        # scoring side, read before the attack (never given to it) so that the pool's nearest
        # look-alikes of the private images are found on another core while it runs
        client_ids, truth_sets, truth_labels = self._truths(server_round, chosen, kept)
        lookup = None
        if self.pool is not None:
            lookup = threading.Thread(target=_prepare_quietly, args=(self.pool, truth_sets, truth_labels), daemon=True)
            lookup.start()
        with Heartbeat(self.out_dir / PROGRESS_FILE, f"round {server_round}: attack") as beat:
            result = invert_updates(self.model, [threats[i] for i in kept], self.input_shape, self.num_classes,
                                    self.attack_config, self.options, progress=beat.phase)
        attack_seconds = time.perf_counter() - start
        # ------------------------------------------------------------ scoring side
        if lookup is not None:
            lookup.join()
        scores = score(truth_sets, truth_labels, result.images, result.labels, self.cfg.leak_threshold,
                       self.pool, failed=result.failed)
        row.update(scores.summary(prefix="attack_"))
        kinds = sorted(set(result.threat))
        row.update({"attack_seconds": round(attack_seconds, 3),
                    "attack_threat_model": "secagg-aggregate" if self.cfg.secure_aggregation else "+".join(kinds)})
        captions = [(f"client {client_ids[c]}" if client_ids[c] >= 0 else "aggregate") + f": ssim {s:.2f} / adj {a:.2f}"
                    for c, s, a in zip(scores.client, scores.ssim, scores.ssim_adjusted)]
        reconstruction_grid(self.out_dir / "attack" / f"round-{server_round:03d}.png", scores.truths,
                            scores.recons, scores.adjusted, captions,
                            title=f"round {server_round}, defense {self.cfg.defense}, {self.cfg.attacker} attacker")
        names = [f"client {client_ids[c]}" if client_ids[c] >= 0 else "aggregate" for c in scores.client]
        save_record(self.out_dir / "attack" / f"round-{server_round:03d}.npz", scores, result.images, result.labels,
                    names, {"command": "hook", "round": server_round, "leak-threshold": self.cfg.leak_threshold,
                            "decoys": None if self.pool is None else self.pool.source,
                            "decoy_spec": None if self.pool is None else self.pool.spec,
                            **self.cfg.to_run_config()})
        return row
