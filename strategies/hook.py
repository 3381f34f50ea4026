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

Where the attack runs (``attack-workers``): with 0 the hook attacks in ``aggregate_fit``, and
the next round waits for it.  With N >= 1 it builds the threat models and reads the scoring
images in ``aggregate_fit``, hands the attack to one of N worker processes
(:mod:`strategies.attack_workers`) and returns; a scoring thread scores each attack when it is
done, and the recorder takes the round's figures (:meth:`AttackHook.take_figures`) before it
writes the round's row.  The federation runs at most ``2 N`` attacks ahead.  The figures are
the same either way (``attack_seconds`` aside, which then counts the attack's own time in its
worker, beside the federation and other attacks).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from logging import WARNING
from pathlib import Path
from typing import Callable

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import Strategy
from flwr.supercore import log

from fl_defense.scoring import save_record, score
from attacks.threat import ThreatModel, attack_config
from attacks.updates import update_options
from fl_defense.config import ExperimentConfig
from fl_defense.plots import reconstruction_grid
from fl_defense.protocol import client_id_of, client_order, was_dropped
from fl_defense.task import client_indices, examples_used, load_data, new_model, round_batches, select_device
from strategies.attack_workers import invert_with_progress
from strategies.wrapper import StrategyWrapper

MAX_IMAGE_STEPS = 256  # the hook attacks uploads of at most this many images x local steps
#: The file (in the run folder) the hook writes its progress line to while an attack runs.
PROGRESS_FILE = "attack/progress.txt"


def _prepare_quietly(pool, truth_sets, truth_labels) -> None:
    """:meth:`DecoyPool.prepare` for every attacked client; an error is left for the scoring,
    which computes the same values again and reports it where every attack error goes."""
    try:
        for images, labels in zip(truth_sets, truth_labels):
            pool.prepare(images, labels)
    except Exception:
        pass


def _or_error(server_round: int, figures: Callable[[], dict]) -> dict:
    """``figures()``, or, when it raises, the error as the round's ``attack_error`` (logged):
    an attack never stops the federation."""
    try:
        return figures()
    except Exception as exc:
        log(WARNING, "round %s: the attack hook failed: %r", server_round, exc)
        return {"attack_error": repr(exc)}


@dataclasses.dataclass
class _Begun:
    """A round's attack between its start and its scoring: the threat models (attack side);
    the attacked clients' ids, private images and labels and the thread that looks up their
    nearest decoys (scoring side); the row so far; the seconds spent preparing it."""

    server_round: int
    threats: list
    row: dict
    client_ids: list
    truth_sets: list
    truth_labels: list
    lookup: threading.Thread | None
    seconds: float


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
        #: rounds whose attack runs in a worker: the future of their figures
        self._jobs: dict[int, Future] = {}
        self.workers = None
        if cfg.attack_workers:
            import torch

            from strategies.attack_workers import AttackWorkers

            self.workers = AttackWorkers(cfg.attack_workers, torch.get_num_threads())
            self._scorer = ThreadPoolExecutor(1, thread_name_prefix="attack-scoring")

    def configure_fit(self, server_round, parameters, client_manager):
        self._global = parameters_to_ndarrays(parameters)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        figures = {}
        if server_round % self.cfg.attack_every == 0 and results and self._global is not None:
            if self.workers is None:
                figures = _or_error(server_round, lambda: self.attack(server_round, results))
            else:
                self._hand_over(server_round, results)
        return self.aggregate_inner(server_round, results, failures, figures)

    # ------------------------------------------------------------------ late figures
    def has_late_figures(self, server_round: int) -> bool:
        """Whether round ``server_round``'s figures come after its ``aggregate_fit`` (its attack
        was handed to a worker); the recorder then takes them with :meth:`take_figures`."""
        return server_round in self._jobs

    def figures_ready(self, server_round: int) -> bool:
        return self._jobs[server_round].done()

    def take_figures(self, server_round: int) -> dict:
        """Round ``server_round``'s figures (waits for its attack); after the run's last round
        the workers are stopped."""
        figures = _or_error(server_round, self._jobs.pop(server_round).result)
        if server_round >= self.cfg.num_server_rounds and not self._jobs:
            self.close()
        return figures

    def close(self) -> None:
        """Stop the worker processes and the scoring thread (nothing when there are none)."""
        if self.workers is not None:
            self._scorer.shutdown(wait=True)
            self.workers.close()

    def _hand_over(self, server_round, results) -> None:
        """Start round ``server_round``'s attack in a worker, its scoring to follow in the
        scoring thread; with ``2 x workers`` attacks unfinished, wait for the oldest first (the
        federation runs at most that far ahead of its attacks)."""
        unfinished = [r for r, job in sorted(self._jobs.items()) if not job.done()]
        if len(unfinished) >= 2 * self.workers.workers:
            wait([self._jobs[unfinished[0]]])
        try:
            begun = self._begin(server_round, results)
            if isinstance(begun, dict):  # nothing to attack: its figures now
                job = self._scorer.submit(dict, begun)
            else:  # a worker that died makes every later submission fail: each round's attack_error
                job = self._scorer.submit(self._complete, begun,
                                          self.workers.submit(invert_with_progress, *self._attack_call(begun)))
        except Exception as exc:
            job = Future()
            job.set_exception(exc)
        self._jobs[server_round] = job

    def _complete(self, begun: "_Begun", call: Future) -> dict:
        return self._finish(begun, call.result())

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
        """Round ``server_round``'s attack of ``results``, here and now, and its figures."""
        begun = self._begin(server_round, results)
        if isinstance(begun, dict):
            return begun
        return self._finish(begun, invert_with_progress(*self._attack_call(begun)))

    def _attack_call(self, begun: "_Begun") -> tuple:
        """The arguments of :func:`~strategies.attack_workers.invert_with_progress` for a round:
        what the attack side holds, nothing of the scoring side."""
        return (self.out_dir / PROGRESS_FILE, f"round {begun.server_round}: attack", self.model, begun.threats,
                self.input_shape, self.num_classes, self.attack_config, self.options)

    def _begin(self, server_round, results) -> "_Begun | dict":
        """What the attack of a round needs, from what the server holds (the threat models of
        the chosen uploads), and, apart, for scoring, the private images; starts the search of
        the pool's look-alikes of those in a thread.  A round with nothing to attack gets its
        figures (a dict) instead."""
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
        return _Begun(server_round, [threats[i] for i in kept], row, client_ids, truth_sets, truth_labels, lookup,
                      time.perf_counter() - start)

    def _finish(self, begun: "_Begun", result) -> dict:
        """Score a round's reconstructions, save its figure and record; its figures."""
        server_round, row = begun.server_round, dict(begun.row)
        client_ids, truth_sets, truth_labels = begun.client_ids, begun.truth_sets, begun.truth_labels
        attack_seconds = begun.seconds + result.seconds
        # ------------------------------------------------------------ scoring side
        if begun.lookup is not None:
            begun.lookup.join()
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
