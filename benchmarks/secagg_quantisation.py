#!/usr/bin/env python
"""SecAgg+'s quantisation error on real updates: what our range (updates, B from the
update's scale, max_weight from the training facts) and Flower's defaults (weights, B = 8,
max_weight = 1000) do to the aggregate of one round.

In-process, no Flower engine: every client's round-1 upload is computed by the client's own
code path (:func:`fl_defense.task.defended_payload`), then put through the arithmetic of
``secaggplus_mod`` and ``SecAggPlusWorkflow`` with Flower's own functions (weight factor,
``quantize`` with stochastic rounding, ``factor_combine``, sum, ``factor_extract``,
``dequantize``, offset, division).  The masks are left out: they cancel exactly in the
protocol's modular integer sum, so they change nothing here.  Compared with the exact
example-weighted mean of the same uploads, every round; the federation carries on with the
exact mean (the same weights for both schemes), so ``--rounds`` shows every round's updates.

    python -m benchmarks.secagg_quantisation --rounds 20
    python -m benchmarks.secagg_quantisation --rounds 20 --set local-steps=1 --set batch-size=1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


from clients.mods import update_of
from experiments.setting import parse_sets
from fl_defense.config import parse_run_config
from fl_defense.models import state_kinds
from fl_defense.task import (client_indices, defended_payload, get_weights, load_data, new_model,
                             payload_to_weights, select_device)
from strategies.secagg import clipping_range, max_weight

TARGET_RANGE = 2 ** 22  # SecAggPlusWorkflow's default quantization_range


def secagg_mean(values: list[list[np.ndarray]], weights: list[int], clip: float, most: float) -> list[np.ndarray]:
    """The weighted mean SecAgg+ computes from these uploads (without the masks)."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (factor_combine, factor_extract,
                                                                    parameters_addition, parameters_multiply)
    from flwr.common.secure_aggregation.quantization import dequantize, quantize

    total = None
    for vals, n in zip(values, weights):
        q_ratio = round(n / most * TARGET_RANGE)
        scaled = parameters_multiply(vals, q_ratio / TARGET_RANGE)
        quantised = factor_combine(q_ratio, quantize(scaled, clip, TARGET_RANGE))
        quantised = [np.asarray(q, dtype=np.int64) for q in quantised]
        total = quantised if total is None else parameters_addition(total, quantised)
    q_total, summed = factor_extract(total)
    out = dequantize(summed, clip, TARGET_RANGE)
    offset = -(len(values) - 1) * clip
    return [(v + offset) * (TARGET_RANGE / q_total) for v in out]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the federation (the exact mean carries on)")
    ap.add_argument("--seed", type=int, default=0, help="NumPy's global seed (SecAgg+'s stochastic rounding)")
    args = ap.parse_args(argv)
    overrides = {}
    overrides.update(parse_sets(args.sets))
    cfg = parse_run_config(overrides)
    np.random.seed(args.seed)  # Flower's stochastic rounding draws from the global generator
    train, _ = load_data(cfg)
    model = new_model(cfg, train)
    kinds, global_w = state_kinds(model), get_weights(model)
    b = clipping_range(cfg)
    schemes = {
        f"ours: updates, B = {b:g}, max_weight = {max_weight(cfg)}": (True, b, float(max_weight(cfg))),
        "Flower's defaults: weights, B = 8, max_weight = 1000": (False, 8.0, 1000.0),
    }
    flat = lambda arrays: np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])  # noqa: E731
    worst = {name: [0, 0.0, 0.0, 0.0] for name in schemes}  # beyond B, max abs err, rms err, rms err / rms update
    largest = 0.0
    print(f"{cfg.num_clients} clients, {cfg.local_steps} steps of {cfg.batch_size}, lr {cfg.lr:g}, model {cfg.model}, "
          f"defense {cfg.defense}, {args.rounds} round(s)", flush=True)
    for server_round in range(1, args.rounds + 1):
        uploads, counts = [], []
        for cid in range(cfg.num_clients):
            idx = client_indices(cfg, cid)
            payload, _, used = defended_payload(cfg, model, kinds, global_w, train.images[idx], train.labels[idx],
                                                cid, server_round, select_device())
            uploads.append(payload_to_weights(global_w, payload, kinds))
            counts.append(used)
        exact = [sum(n * np.asarray(u[i], np.float64) for u, n in zip(uploads, counts)) / sum(counts)
                 for i in range(len(global_w))]
        rms_update = float(np.sqrt(np.mean(flat(update_of(exact, global_w)) ** 2)))
        largest = max(largest, max(float(np.abs(flat(update_of(u, global_w))).max()) for u in uploads))
        line = []
        for name, (is_update, clip, most) in schemes.items():
            values = [update_of(u, global_w) if is_update else u for u in uploads]
            beyond = int(sum((np.abs(flat(v)) > clip).sum() for v in values))
            agg = secagg_mean(values, counts, clip, most)
            got = [np.asarray(g, np.float64) + a for g, a in zip(global_w, agg)] if is_update else agg
            err = flat(got) - flat(exact)
            rms = float(np.sqrt(np.mean(err ** 2)))
            w = worst[name]
            worst[name] = [w[0] + beyond, max(w[1], float(np.abs(err).max())), max(w[2], rms),
                           max(w[3], rms / rms_update)]
            line.append(f"{rms / rms_update:.2g}")
        print(f"round {server_round}: largest update coordinate so far {largest:.4g}; rms error / rms update: "
              + ", ".join(line), flush=True)
        global_w = [e.astype(g.dtype) for e, g in zip(exact, global_w)]  # the run carries on with the exact mean
    print()
    print(f"largest update coordinate: {largest:.4g} ({largest / cfg.lr:.3g} lr)")
    print()
    print("| quantised | values beyond B (all rounds) | max abs error | max rms error | max rms error / rms update |")
    print("|---|---|---|---|---|")
    for name, (beyond, maxabs, rms, rel) in worst.items():
        print(f"| {name} | {beyond} | {maxabs:.3g} | {rms:.3g} | {rel:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
