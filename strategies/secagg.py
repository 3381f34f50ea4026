"""Secure aggregation (SecAgg+; Bell et al., 2020): the workflow and what the strategy
stack receives under it.

With ``secure-aggregation = true`` the ServerApp runs
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` and every client runs
``secaggplus_mod`` (``clients/client_app.py``).  Each client uploads ``[w, w * x]`` with
pairwise and private masks, ``w`` its ``num_examples`` over ``max_weight``, ``x`` its
upload quantised to integers; the server learns only the sum and hands *every* ``FitRes``
the same aggregate ``sum(w_i x_i) / sum(w_i)``.  ``num_examples`` and ``metrics`` of each
``FitRes`` stay the client's own, in plain text.

What is uploaded, and the quantisation range
--------------------------------------------
Under SecAgg+ the client's ``secagg_update_mod`` uploads its *update* ``upload - global``
(every array; float64), not its weights, and :class:`SecAggDecoder` adds the global
weights back to the aggregate, so the rest of the stack sees weights as in any run.  The
reason is the quantisation: SecAgg+ clips every uploaded coordinate to ``[-B, B]`` and
maps it to one of ``2^22`` levels by stochastic rounding, so each client adds to every
coordinate of the weighted mean an unbiased error of at most ``2B / 2^22`` (divided by
its weight).  B must cover the values quantised, or they are clipped and the mean is
biased; above that, a larger B only coarsens the levels.  The update is what scales with
the training (its coordinates follow ``lr x local-steps``), and what a clipping defense
bounds, so B is set from the update's scale (:func:`clipping_range`):

* the update is clipped to L2 norm C (defense ``clipping:C`` with a model without
  BatchNorm buffers, ``dp-strategy client-side-fixed-clipping``): no coordinate exceeds
  C, so ``B = C`` clips nothing;
* ``dp-gaussian:Z``: the clipped update plus N(0, (Z C)^2) noise: ``B = C (1 + 6 Z)``,
  beyond which a coordinate lies with probability below 2e-9 (clipping it is
  post-processing of the client's release and costs no privacy);
* otherwise ``B = 10 x lr`` (:data:`UNBOUNDED_MARGIN`), and at least ``local-steps`` with
  BatchNorm (its ``num_batches_tracked`` grows by exactly that): the largest update
  coordinate measured was 1.47 lr (LeNet, one step of one image) and 1.32 lr (LeNet, 20
  steps of 32) over 20 rounds, and 2 lr to 5.1 lr (BNCNN, round 1), so 10 lr leaves a
  margin of 2 or more
  (``tests/test_formal_privacy.py`` checks round 1, ``benchmarks/secagg_quantisation.py``
  every round of a run);
* ``secagg-clipping-range > 0`` sets B directly.

At B = 1 (lr 0.1) a level is ``2 / 2^22 = 4.8e-7``; the aggregate's rms error stayed below
7e-5 of the rms update over 20 rounds, against 0.37 with Flower's defaults (weights, B = 8,
``max_weight`` = 1000) for one-image clients (``benchmarks/secagg_quantisation.py``).

``max_weight`` is the largest ``num_examples`` a client can report (the distinct images
of ``local-steps`` batches of ``batch-size``, at most ``images-per-client``), so a
client's weight ``w <= 1`` keeps all 22 bits (Flower's default of 1000 would leave a
one-image client 1/1000 of them).
"""

from __future__ import annotations

from flwr.common import FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

import numpy as np

from fl_defense.config import ExperimentConfig
from fl_defense.models import has_batchnorm
from strategies.wrapper import StrategyWrapper


UNBOUNDED_MARGIN = 10.0
"""B over ``lr`` when nothing bounds the update (module docstring)."""


def clipping_range(cfg: ExperimentConfig) -> float:
    """B, the bound of the quantised update coordinates (module docstring)."""
    if cfg.secagg_clipping_range > 0:
        return cfg.secagg_clipping_range
    if cfg.defense.name == "dp-gaussian":
        return cfg.dp_clip * (1.0 + 6.0 * cfg.defense.value)
    if cfg.dp_strategy == "client-side-fixed-clipping":
        return cfg.dp_clip
    batchnorm = has_batchnorm(cfg.model)
    if cfg.defense.name == "clipping" and not batchnorm:
        return float(cfg.defense.value)
    scale = UNBOUNDED_MARGIN * cfg.lr
    return max(scale, float(cfg.local_steps)) if batchnorm else scale


def max_weight(cfg: ExperimentConfig) -> int:
    """The largest ``num_examples`` a client reports (distinct images trained on)."""
    most = cfg.local_steps * cfg.batch_size
    return min(most, cfg.images_per_client) if cfg.images_per_client > 0 else most


def secagg_workflow(cfg: ExperimentConfig) -> SecAggPlusWorkflow:
    return SecAggPlusWorkflow(num_shares=cfg.secagg_num_shares,
                              reconstruction_threshold=cfg.secagg_reconstruction_threshold,
                              max_weight=float(max_weight(cfg)), clipping_range=float(clipping_range(cfg)))


def run_workflow(cfg: ExperimentConfig) -> DefaultWorkflow:
    """Flower's default workflow, with SecAgg+ for the fit rounds when it is on."""
    return DefaultWorkflow(fit_workflow=secagg_workflow(cfg) if cfg.secure_aggregation else None)


def add_update(global_w: list[np.ndarray], update: list[np.ndarray]) -> list[np.ndarray]:
    """``global + update`` in the global arrays' dtypes (integers rounded)."""
    if len(global_w) != len(update):
        raise ValueError(f"the aggregate has {len(update)} arrays, the model {len(global_w)}")
    out = []
    for g, u in zip(global_w, update):
        value = np.asarray(g, dtype=np.float64) + np.asarray(u, dtype=np.float64).reshape(np.shape(g))
        out.append((np.rint(value) if np.issubdtype(g.dtype, np.integer) else value).astype(g.dtype))
    return out


class SecAggDecoder(StrategyWrapper):
    """Under SecAgg+: every ``FitRes`` carries the aggregate of the uploaded *updates*;
    hand the inner stack ``global + aggregate`` (weights, the global's dtypes) instead.

    It also counts each failed client once: Flower 1.42's collect-masked-vectors stage
    appends the error of a client that failed in ``fit`` to the failures twice (once while
    summing the masked vectors, once while building the legacy results), so the failures
    are cut to the sampled clients that gave no result."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self._global: list[np.ndarray] | None = None
        self._sampled = 0

    def configure_fit(self, server_round, parameters, client_manager):
        self._global = parameters_to_ndarrays(parameters)
        instructions = self.inner.configure_fit(server_round, parameters, client_manager)
        self._sampled = len(instructions)
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        failures = list(failures)[:max(self._sampled - len(results), 0)]
        if results and self._global is not None:
            decoded = {}
            for _, res in results:  # one aggregate, shared by every FitRes
                key = id(res.parameters)
                if key not in decoded:
                    decoded[key] = ndarrays_to_parameters(
                        add_update(self._global, parameters_to_ndarrays(res.parameters)))
            results = [(proxy, FitRes(status=res.status, parameters=decoded[id(res.parameters)],
                                      num_examples=res.num_examples, metrics=res.metrics))
                       for proxy, res in results]
        return self.inner.aggregate_fit(server_round, results, failures)
