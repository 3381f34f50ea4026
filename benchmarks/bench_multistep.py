"""Benchmark: the multi-step attack vectorised over clients against one client at a time.

Builds, once, the uploads of ``--clients`` clients that each train ``--local-steps`` K SGD
steps of ``--batch-size`` B over ``--images-per-client`` N real digits the way ``fit`` does
(:func:`experiments.client_attack.client_uploads`, no defense, the config's model and lr unless
``--model`` / ``--lr`` say otherwise), then inverts
the same uploads twice in one process with the same settings and seeds:

* **vectorised**: one :func:`attacks.updates.invert_updates` call over all clients (the
  batched L-BFGS advances every client's problem, label hypotheses included, together);
* **one at a time**: one call per client (with ``--baseline-clients M``, for the first M
  clients only: a sample of the same updates, so that a large round's baseline does not take
  hours; its leak is then compared with the vectorised call's on the same M clients).

Both are scored one-to-one (:func:`fl_defense.scoring.score`).  Prints images per minute
(wall clock), CPU seconds, leak rate (adjusted SSIM >= the leak threshold) and label
accuracy of each, and the ratio vectorised / one at a time.  Labels are inferred.

    python -m benchmarks.bench_multistep --clients 16 --batch-size 4 --local-steps 1
    python -m benchmarks.bench_multistep --clients 8 --batch-size 2 --local-steps 2 --images-per-client 4
    python -m benchmarks.bench_multistep --clients 64 --batch-size 2 --local-steps 2 --images-per-client 4 \
        --baseline-clients 8                                          # a large round, the baseline sampled
    python -m benchmarks.bench_multistep --clients 8 --eval-cost     # ms per evaluation, per path
    python -m benchmarks.bench_multistep --clients 4 --batch-size 4 --local-steps 4 --images-per-client 4 \
        --model lenet --lr 0.1 --phases                               # where the vectorised call's time goes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


from attacks.layerwise import layer_chain
from attacks.multistep import assumed_batches, one_batch
from fl_defense.scoring import score
from attacks.threat import attack_config
from attacks.updates import invert_updates, update_options
from experiments.client_attack import client_uploads, experiment_model, group_images
from experiments.targets import dataset_targets
from fl_defense.config import parse_run_config
from fl_defense.task import get_weights


def measure(label: str, calls, images, labels, used, threshold: float, pool=None) -> dict:
    """Run ``calls`` (functions returning :class:`UpdateAttackResult`), score (identification
    against ``pool``, the paper's criterion when there is none), summarise."""
    wall, cpu = time.perf_counter(), time.process_time()
    recons, labs = [], []
    for call in calls:
        res = call()
        recons += res.images
        labs += res.labels
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sc = score([images[u] for u in used], [labels[u] for u in used], recons, labs, threshold, pool)
    leaked = sc.leaked if sc.leaked is not None else sc.leaked_paper
    n = len(leaked)
    out = {"name": label, "images": n, "wall": wall, "cpu": cpu, "per_min": 60 * n / wall,
           "leaked": int(leaked.sum()), "label_acc": float(np.mean(sc.label_pred == sc.label_true)),
           "leaked_per_image": leaked}
    print(f"{label:>14}: {n} images in {wall:6.1f}s wall ({cpu:6.1f} CPU-s): {out['per_min']:6.1f} images/min; "
          f"leaked {out['leaked']}/{n}, label accuracy {out['label_acc']:.3f}", flush=True)
    return out


def eval_cost(model, threats, shape, num_classes: int, acfg, repeats: int = 50) -> float:
    """Milliseconds per evaluation of the matching loss and its input gradient, for one
    client alone and for all of them in one call, through each path the problem has: the
    closed form (one batch of a plain chain), the im2col simulation (a plain chain; the
    problem takes it for at most ``chain_targets`` targets per call) and the ``torch.func``
    simulation (``grad_impl="vmap"``).  A path is forced here for all sizes to compare.
    Returns (and prints) the batching gain per evaluation: the cheapest evaluation of one
    client alone over the cheapest per-client cost of all of them in one call, the ceiling
    of the images-per-minute ratio of the vectorised engine on this machine (the engine's
    rows also end at different times, which only lowers it)."""
    from dataclasses import replace

    from attacks.multistep import MultiStepProblem
    from attacks.objectives import loss_scale

    names = [n for n, _ in model.named_parameters()]
    params = {n: v.float() for n, v in threats[0].parameters(model).items()}
    obs = [torch.stack(o) for o in zip(*(t.pseudo_gradient(model) for t in threats))]
    n, k, b = threats[0].shape
    labels = torch.zeros(len(threats), n, dtype=torch.long)
    batches = assumed_batches(n, k, b)
    costs: dict[str, list[float]] = {}
    for path in ("closed form", "im2col", "torch.func"):
        cfg = replace(acfg, grad_impl="vmap" if path == "torch.func" else "auto")
        prob = MultiStepProblem(model, names, params, True, obs, [], labels, batches, threats[0].lr, shape,
                                num_classes, cfg, torch.device("cpu"), loss_scale(obs, cfg.objective))
        if path == "closed form" and prob.fused is None:
            continue
        if path == "im2col":
            if prob.chain_targets == 0:
                continue
            prob.fused, chosen = None, prob.chain_targets
            prob.chain_targets = len(threats)
        cost = []
        for u in (1, len(threats)):
            z, idx = torch.rand(u, prob.n_img + prob.n_lab), torch.arange(u)
            prob.batched(z, idx)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                prob.batched(z, idx)
            cost.append(1000 * (time.perf_counter() - t0) / repeats)
        note = f" (the problem takes it up to {chosen} client(s) per call)" if path == "im2col" else ""
        print(f"evaluation, {path:>11}: {cost[0]:6.1f} ms for one client, {cost[1]:6.1f} ms for "
              f"{len(threats)} together ({cost[1] / len(threats):.1f} ms each){note}", flush=True)
        costs[path] = cost
    alone = min(costs, key=lambda path: costs[path][0])
    together = min(costs, key=lambda path: costs[path][1])
    gain = costs[alone][0] / (costs[together][1] / len(threats))
    print(f"batching gain per evaluation: {gain:.1f}x ({costs[alone][0]:.1f} ms for one client ({alone}) against "
          f"{costs[together][1] / len(threats):.1f} ms each of {len(threats)} together ({together})): the most "
          f"that attacking them together can give here, before clients end at different times", flush=True)
    return gain


def phases(model, threats, shape, num_classes: int, acfg, opts) -> None:
    """The vectorised call alone, timed per runner call of :mod:`attacks.updates` (the
    screenings, continuations and tries: rows, iteration budget, wall seconds, evaluations,
    each row's labels and the relative loss it reached), then how many rows the evaluations
    held.  Evaluations are counted by :class:`benchmarks.profile_attack.SectionTimer`."""
    import attacks.updates as updates
    from attacks.multistep import MultiStepProblem
    from benchmarks.profile_attack import SectionTimer

    timer = SectionTimer()
    timer.wrap(MultiStepProblem, "batched", "evaluation", sizes=True)
    calls = []
    run = updates._Group.run

    def timed(group, rows, labels, max_iter, *args, **kwargs):
        before, start = timer.calls["evaluation"], time.perf_counter()
        out = run(group, rows, labels, max_iter, *args, **kwargs)
        rel = (out[1] / group.scale[rows]).tolist()
        calls.append((rows.tolist(), labels.tolist(), max_iter, time.perf_counter() - start,
                      timer.calls["evaluation"] - before, rel, out[2].tolist()))
        return out

    updates._Group.run = timed
    start = time.perf_counter()
    try:
        invert_updates(model, threats, shape, num_classes, acfg, opts)
    finally:
        updates._Group.run = run
        timer.restore()
    print(f"vectorised call: {time.perf_counter() - start:.1f} s wall, {len(calls)} runner call(s)", flush=True)
    for rows, labels, budget, sec, evals, rel, iters in calls:
        print(f"  {len(rows):3d} rows, budget {budget:5d}: {sec:7.1f} s, {evals} evaluations")
        for r, lab, v, it in zip(rows, labels, rel, iters):
            print(f"      client {r}: labels {tuple(lab)} -> relative loss {v:.2g} after {it} iterations")
    hist = sorted(timer.batch_sizes.items())
    print("rows per evaluation: " + ", ".join(f"{u}: {k}" for u, k in hist), flush=True)


def add_client_arguments(p: argparse.ArgumentParser, clients: int) -> None:
    """The round's clients: how many, what each trains (B, K, N) and on which data set."""
    p.add_argument("--clients", type=int, default=clients)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--images-per-client", type=int, default=None, help="N (default B)")
    p.add_argument("--dataset", default="mnist-embedded")


def round_uploads(cfg, clients: int, n_per: int, dataset: str, shuffle: bool = True):
    """``clients`` clients of ``n_per`` images of ``dataset`` (consecutive groups, in a seeded
    order unless ``shuffle`` is false) train on the config's fresh model from its global
    weights, round 0, client ids 0..; returns ``(images, labels, num_classes, model, groups,
    threats, used, pool)`` (:func:`experiments.client_attack.client_uploads`); the images come
    from the data set's tuning split, the pool is the rest of it."""
    from fl_defense.decoys import pool_for_dataset

    n = clients * n_per
    t = dataset_targets(dataset, n, cfg.seed, cfg.data_dir, shuffle=shuffle, split="tuning")
    images, labels, nc = t.images, t.labels, t.num_classes
    pool = pool_for_dataset(dataset, cfg.data_dir, cfg.seed, exclude=t.test_positions)
    model = experiment_model(cfg, images.shape[1], images.shape[2], nc)
    groups = group_images(n, n_per)
    threats, used = client_uploads(cfg, model, get_weights(model), images, labels, groups,
                                   [cfg.defense] * len(groups), list(range(len(groups))), [0] * len(groups),
                                   torch.device("cpu"))
    return images, labels, nc, model, groups, threats, used, pool


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_client_arguments(p, clients=16)
    p.add_argument("--model", default=None, help="lenet | tanhcnn | bncnn (default: the config's)")
    p.add_argument("--lr", type=float, default=None, help="the clients' learning rate (default: the config's)")
    p.add_argument("--max-iter", type=int, default=None, help="attack-max-iter (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", default="1",
                   help="comma-separated torch thread counts; each runs both ways (e.g. 1,2)")
    p.add_argument("--baseline-clients", dest="baseline_clients", type=int, default=None,
                   help="attack only the first M clients one at a time (default: all): a sample of the same "
                        "updates for the baseline's images per minute, with the vectorised leak on those M too")
    p.add_argument("--eval-cost", dest="eval_cost", action="store_true",
                   help="only time one evaluation of the loss and its gradient per path (closed form, torch.func)")
    p.add_argument("--phases", action="store_true",
                   help="only the vectorised call, timed per screening, continuation and try")
    args = p.parse_args(argv)
    try:
        threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        p.error(f"--threads must list positive ints; got {args.threads!r}")
    torch.set_num_threads(threads[0])
    n_per = args.images_per_client or args.batch_size
    values = {"local-steps": args.local_steps, "batch-size": args.batch_size, "images-per-client": n_per,
              "seed": args.seed}
    for key, value in (("attack-max-iter", args.max_iter), ("model", args.model), ("lr", args.lr)):
        if value is not None:
            values[key] = value
    if args.baseline_clients is not None and not 1 <= args.baseline_clients <= args.clients:
        p.error(f"--baseline-clients must be between 1 and --clients ({args.clients}); got {args.baseline_clients}")
    cfg = parse_run_config(values)
    images, labels, nc, model, _, threats, used, pool = round_uploads(cfg, args.clients, n_per, args.dataset)
    acfg, opts = attack_config(cfg, device="cpu"), update_options(cfg, model)
    shape = tuple(images.shape[1:])
    print(f"{args.clients} clients of {n_per} images, {cfg.local_steps} step(s) of {cfg.batch_size}, "
          f"lr {cfg.lr:g}, {cfg.model}, labels inferred, attack-max-iter {cfg.attack_max_iter}", flush=True)
    chain = layer_chain(model) is not None
    closed = chain and one_batch(assumed_batches(n_per, cfg.local_steps, cfg.batch_size), n_per)
    print("evaluation: " + ("the closed-form double back-propagation (attacks.layerwise, one batch)" if closed
                            else "the im2col simulation of the local steps for a few clients per call, "
                                 "torch.func for more" if chain
                            else "the torch.func simulation of the local steps"), flush=True)
    if args.eval_cost:
        eval_cost(model, threats, shape, nc, acfg)
        return 0
    if args.phases:
        phases(model, threats, shape, nc, acfg, opts)
        return 0
    summary = []
    for t in threads:
        torch.set_num_threads(t)
        print(f"\n## {t} thread(s)", flush=True)
        vec = measure("vectorised", [lambda: invert_updates(model, threats, shape, nc, acfg, opts)],
                      images, labels, used, cfg.leak_threshold, pool)
        m = args.baseline_clients or len(threats)
        one = measure("one at a time",
                      [lambda th=th: invert_updates(model, [th], shape, nc, acfg, opts) for th in threats[:m]],
                      images, labels, used[:m], cfg.leak_threshold, pool)
        ratio = vec["per_min"] / one["per_min"]
        # the same updates: the vectorised call's leak on the baseline's clients (images in client order)
        same = int(vec["leaked_per_image"][:one["images"]].sum())
        sample = "" if m == len(threats) else f"; the first {m} of {len(threats)} clients one at a time"
        summary.append(f"{t} thread(s): vectorised / one at a time: {ratio:.1f}x images per minute "
                       f"(leaked {same} vs {one['leaked']} of the {one['images']} images both attacked{sample})")
        print(summary[-1], flush=True)
    print("\n" + "\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
