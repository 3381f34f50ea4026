"""Benchmark: breaching's optimization attacker on the same client uploads as ours, side by side.

The issue that asked for the multi-step engine quoted breaching's times per client (Geiping
et al.'s `breaching`, its optimization attacker with the papers' L-BFGS: 300 steps, one trial)
as the bar, measured on another machine.  This script measures both on this machine, on the
same uploads: it builds them once the way ``fit`` does
(:func:`experiments.client_attack.client_uploads`, as ``bench_multistep.py`` and ``run_sim.py
attack`` do), then

* **fl-defense**: one :func:`attacks.updates.invert_updates` call over all clients, labels
  inferred (``--labels given``: handed over, flagged);
* **breaching**: ``breaching.attacks.prepare_attack`` with its ``deepleakage`` config turned into
  the plain optimization attacker (``attack_type=optimization``, L-BFGS of step 1,
  ``--iterations`` outer steps, one trial), one client at a time.  One local step: it is handed
  the pseudo-gradient ``(global - upload) / lr`` and, unless ``--labels given``, recovers the
  labels with its ``bias-corrected`` strategy.  Several steps: it is handed the difference
  ``upload - global`` and the local hyper-parameters (lr, steps, images per step), with the
  labels of every step (its multi-step user needs them: always ``given``), the images laid out
  in the order the client used them (one epoch, or full-batch steps, whose loss does not depend
  on the order; other layouts are refused).

Both are scored one-to-one (:func:`fl_defense.scoring.score`).  Prints seconds per client (wall
and CPU), leak rate and label accuracy of each.

breaching is not a dependency of fl-defense: install it beside it, e.g. in a venv that sees
the project's packages::

    python -m venv --system-site-packages .venv-breaching && .venv-breaching/bin/pip install breaching
    .venv-breaching/bin/python -m benchmarks.vs_breaching --clients 4 --batch-size 4 --local-steps 4 \\
        --images-per-client 4 --labels given
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


from fl_defense.scoring import score
from attacks.threat import attack_config
from attacks.updates import invert_updates, update_options
from benchmarks.bench_multistep import add_client_arguments, round_uploads
PAPERS_LR = 0.1  # DLG / iDLG's client learning rate
from fl_defense.config import parse_run_config
from fl_defense.task import round_batches, set_weights


def breaching_layout(batches: list[np.ndarray], n: int) -> np.ndarray | None:
    """The order (positions in the client's group) in which breaching's multi-step user must
    hold the images: its step ``i`` trains on the next ``B`` of them, cycling.  One epoch (every
    image at most once): the batches in turn; full-batch steps (every batch holds all ``n``):
    the first batch's order (the mean loss does not depend on it).  ``None`` for other
    layouts (several epochs of smaller batches), which breaching's user cannot express."""
    flat = np.concatenate(batches)
    if len(np.unique(flat)) == len(flat):
        return flat
    if all(len(b) == n for b in batches):
        return batches[0]
    return None


def breaching_config(iterations: int):
    """breaching's ``deepleakage`` attack config as the plain optimization attacker: L-BFGS of
    step 1 for ``iterations`` steps, one trial, ``bias-corrected`` labels when not given."""
    import breaching

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hydra's version_base notice
        return breaching.get_attack_config("deepleakage", overrides=[
            "attack_type=optimization", "label_strategy=bias-corrected", f"optim.max_iterations={iterations}",
            "restarts.num_trials=1", f"optim.callback={10 * iterations}"])


def run_breaching(cfg, model, threat, true_labels: np.ndarray | None, shape, num_classes: int,
                  order: np.ndarray | None, k: int, b: int):
    """One client's upload through breaching's attacker of config ``cfg``
    (:func:`breaching_config`); returns ``(images [N, C, H, W] in [0, 1], labels [N], wall
    seconds, CPU seconds)``."""
    import breaching

    setup = dict(dtype=torch.float, device=torch.device("cpu"))
    net = copy.deepcopy(model)
    set_weights(net, threat.global_weights)
    attacker = breaching.attacks.prepare_attack(net, torch.nn.CrossEntropyLoss(), cfg, setup)
    params = [p.detach().clone() for p in net.parameters()]
    g = threat.pseudo_gradient(model)
    n = int(threat.num_examples)
    if true_labels is not None and order is not None:
        true_labels = true_labels[order]  # as the images are laid out for the multi-step user
    if k == 1:
        grads, hyper = [x.float() for x in g], None
    else:
        grads = [(-threat.lr * x).float() for x in g]
        steps = [torch.as_tensor(true_labels[(i * b) % n:(i * b) % n + min(b, n)]) for i in range(k)]
        hyper = {"lr": float(threat.lr), "steps": k, "data_per_step": min(b, n), "labels": steps}
    labels = None if true_labels is None else torch.as_tensor(true_labels)
    shared = {"gradients": grads, "buffers": None,
              "metadata": {"num_data_points": n, "labels": labels, "local_hyperparams": hyper}}
    payload = {"parameters": params, "buffers": None,
               "metadata": SimpleNamespace(shape=tuple(shape), modality="vision", classes=num_classes)}
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        rec, _ = attacker.reconstruct([payload], [shared], {}, dryrun=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    x = rec["data"].detach().clamp(0, 1).cpu().numpy()
    return x, rec["labels"].detach().cpu().numpy().astype(np.int64), wall, cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_client_arguments(p, clients=4)
    p.add_argument("--model", default="lenet", help="lenet | tanhcnn | bncnn (default: lenet, as run_sim attack)")
    p.add_argument("--lr", type=float, default=PAPERS_LR,
                   help=f"the clients' learning rate (default {PAPERS_LR}, as run_sim attack)")
    p.add_argument("--iterations", type=int, default=300, help="breaching's L-BFGS steps (default 300)")
    p.add_argument("--labels", choices=("infer", "given"), default="infer",
                   help="infer (one local step only) or given to both attackers (an upper bound)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.local_steps > 1 and args.labels != "given":
        p.error("breaching's multi-step user needs the labels of every step: pass --labels given")
    if args.iterations < 1 or args.clients < 1:
        p.error(f"--iterations and --clients must be >= 1; got {args.iterations}, {args.clients}")
    try:
        import breaching  # noqa: F401
    except ImportError:
        p.error("breaching is not installed: pip install breaching (see this script's docstring)")
    n_per = args.images_per_client or args.batch_size
    values = {"local-steps": args.local_steps, "batch-size": args.batch_size, "images-per-client": n_per,
              "seed": args.seed, "model": args.model, "lr": args.lr}
    cfg = parse_run_config(values)
    # the data as run_sim attack draws it (in index order for one image per client)
    images, labels, nc, model, groups, threats, used, pool = round_uploads(cfg, args.clients, n_per, args.dataset,
                                                                           shuffle=n_per > 1)
    orders = []
    for cid, grp in enumerate(groups):
        order = breaching_layout(round_batches(cfg, len(grp), cid, 0), len(grp)) if cfg.local_steps > 1 else None
        if cfg.local_steps > 1 and order is None:
            p.error("breaching's multi-step user cannot express several epochs of batches smaller than N")
        orders.append(order)
    shape = tuple(images.shape[1:])
    given = args.labels == "given"
    print(f"{args.clients} clients of {n_per} images, {cfg.local_steps} step(s) of {cfg.batch_size}, lr {cfg.lr:g}, "
          f"{cfg.model}, labels {'GIVEN (upper bound)' if given else 'inferred'}; breaching: {args.iterations} "
          f"L-BFGS steps, one trial; {torch.get_num_threads()} thread(s)", flush=True)
    true_sets = [labels[u] for u in used]
    truths = [images[u] for u in used]

    acfg, opts = attack_config(cfg, device="cpu"), update_options(cfg, model, labels_given=given)
    wall, cpu = time.perf_counter(), time.process_time()
    res = invert_updates(model, threats, shape, nc, acfg, opts, labels=true_sets if given else None)
    ours = (res.images, res.labels, time.perf_counter() - wall, time.process_time() - cpu)

    bcfg = breaching_config(args.iterations)
    recs, labs, b_wall, b_cpu = [], [], 0.0, 0.0
    for th, grp, order, u in zip(threats, groups, orders, used):
        # several steps: the group's labels, laid out by ``order`` (positions in the group);
        # one step: the labels of the images the client used (the scoring is one-to-one)
        truth = labels[grp] if cfg.local_steps > 1 else labels[u]
        x, lab, w, c = run_breaching(bcfg, model, th, truth if given else None, shape, nc, order,
                                     cfg.local_steps, cfg.batch_size)
        recs.append(x)
        labs.append(lab)
        b_wall, b_cpu = b_wall + w, b_cpu + c
    theirs = (recs, labs, b_wall, b_cpu)

    for name, (r, lab, w, c) in (("fl-defense", ours), ("breaching", theirs)):
        sc = score(truths, true_sets, list(r), list(lab), cfg.leak_threshold, pool)
        k = len(sc.leaked)
        print(f"{name:>10}: leaked {int(sc.leaked.sum())}/{k} (paper criterion {int(sc.leaked_paper.sum())}/{k}; "
              f"median adjusted SSIM "
              f"{np.median(sc.ssim_adjusted):.3f}), label accuracy {np.mean(sc.label_pred == sc.label_true):.3f}; "
              f"{w / len(threats):.1f} s per client wall, {c / len(threats):.1f} CPU-s", flush=True)
    print(f"breaching / fl-defense: {theirs[2] / ours[2]:.1f}x the wall time per client")
    return 0


if __name__ == "__main__":
    sys.exit(main())
