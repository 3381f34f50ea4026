"""Benchmark: how the labels of a batch decide what its upload gives away.

The last layer's gradient of a batch is ``sum_i (p_i - e_{y_i}) h_i^T / B`` over its images
(``h_i`` the features, ``p_i`` the softmax output, ``e_y`` the one-hot label).  With two
classes its rows are each other's negatives, and a batch whose images share few labels
gives the attack few independent directions in that layer: the inverse problem is then
badly conditioned, and an attack that matches the gradient closely can still be far from
the images.  This benchmark attacks the same images under several labellings, in one
setting (the leak map's cell of B images in one step: :func:`benchmarks.leak_map.run_cell`), so that
the effect of the labels is measured apart from the images.

Labellings (``--labels``, comma-separated):

* ``real``: the data set's own labels (the embedded faces: face and non-face);
* ``distinct-C``: image ``i`` of the split gets label ``i mod C`` of C classes, so a client
  of N <= C images holds N different labels (as clients holding photographs of several
  people in an identity task);
* ``shared-C``: image ``i`` gets label ``(i // N) mod C``, so every client's images share
  one label (as a client holding one person's photographs).

For each labelling the row holds the cell's counts by both criteria, with 95% intervals and
the counts per label of the data set (``by_label``), and a diagnostic of the inverse
problem that only the scorer can compute, since it needs the private images: the singular
values of the Jacobian of the first client's pseudo-gradient with respect to its images,
at those images (:func:`jacobian_singular_values`), as ratios to the largest (the median
and the smallest).  A small ratio is a direction of image space that changes the upload by
that fraction of the most visible one.

Each finished labelling is written to ``--out`` as ``labellings/<name>.json`` (atomically)
and skipped when the command runs again; at the end ``label_spread.json`` holds the
command, the date and one row per labelling.

    python -m benchmarks.label_spread --kind faces --n 60 --out docs/results/label_spread-faces
    python -m benchmarks.label_spread --kind digits --n 4 --labels real,shared-10 --out /tmp/spread
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.rows import cached_row, command_line, row_summary

SCHEME = re.compile(r"^(real|distinct-(\d+)|shared-(\d+))$")
DEFAULT_LABELLINGS = "real,distinct-10,distinct-62,shared-10"


def parse_labellings(text: str) -> list[str]:
    """``real,distinct-C,shared-C`` -> the names, in order; ``ValueError`` naming the first
    malformed or repeated one (C >= 2)."""
    names = [item.strip() for item in text.split(",")]
    for name in names:
        m = SCHEME.match(name)
        if m is None or (name != "real" and int(m.group(2) or m.group(3)) < 2):
            raise ValueError(f"--labels wants real, distinct-C or shared-C with C >= 2, comma-separated; "
                             f"got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--labels names a labelling twice: {text!r}")
    return names


def relabelling(name: str, per_client: int):
    """The function ``labels -> (labels, num_classes)`` of a labelling (``None`` for
    ``real``), for clients of ``per_client`` consecutive images."""
    m = SCHEME.match(name)
    if name == "real":
        return None
    classes = int(m.group(2) or m.group(3))
    if m.group(2):
        return lambda labels: (np.arange(len(labels), dtype=np.int64) % classes, classes)
    return lambda labels: ((np.arange(len(labels), dtype=np.int64) // per_client) % classes, classes)


def jacobian_singular_values(model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The ``B*C*H*W`` singular values, largest first, of the Jacobian of the batch's mean
    cross-entropy gradient (every trainable parameter, flattened) with respect to the
    batch's images, at ``images [B, C, H, W]`` with ``labels [B]``: one SGD step's
    pseudo-gradient, its sensitivity to each direction of image space.  The Jacobian is
    built column by column with forward-mode derivatives; the values are the square roots
    of the eigenvalues of its Gram matrix, summed in float64 (zero where that is below zero by
    rounding)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    x0 = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def pseudo(flat):
        def loss(p):
            return F.cross_entropy(functional_call(model, {**p, **buffers}, (flat.reshape(x0.shape),)), y)
        return torch.cat([g.flatten() for g in grad(loss)(params).values()])

    flat = x0.flatten()
    n = flat.numel()
    rows = []
    for start in range(0, n, 256):
        idx = torch.arange(start, min(start + 256, n))
        basis = torch.zeros(len(idx), n)
        basis[torch.arange(len(idx)), idx] = 1.0
        rows.append(vmap(lambda v: jvp(pseudo, (flat,), (v,))[1])(basis))
    jt = torch.cat(rows)  # [n, P]: the Jacobian's transpose
    gram = torch.zeros(n, n, dtype=torch.float64)
    for start in range(0, jt.shape[1], 8192):
        block = jt[:, start:start + 8192].double()
        gram += block @ block.T
    eig = torch.linalg.eigvalsh(gram)
    return eig.clamp_min(0).sqrt().flip(0).numpy()


def spectrum_row(kind: str, b: int, n: int, seed: int, overrides: dict, relabel, split: str) -> dict:
    """The singular-value ratios of the first client's images under a labelling: the images,
    global model and labels the first client of :func:`benchmarks.leak_map.run_cell`'s cell
    (B = ``b``, one step, at least ``n`` images) trains on."""
    from benchmarks.leak_map import KINDS
    from experiments.client_attack import experiment_model
    from experiments.targets import dataset_targets
    from fl_defense.config import parse_run_config

    cfg = parse_run_config({**overrides, "dataset": KINDS[kind], "seed": seed})
    t = dataset_targets(cfg.dataset, math.ceil(n / b) * b, seed, cfg.data_dir, shuffle=True, split=split)
    labels, classes = (t.labels, t.num_classes) if relabel is None else relabel(t.labels)
    model = experiment_model(cfg, t.images.shape[1], t.images.shape[2], classes)
    sv = jacobian_singular_values(model, t.images[:b], labels[:b])
    return {"sv_max": float(sv[0]), "sv_median_ratio": float(np.median(sv) / sv[0]),
            "sv_min_ratio": float(sv[-1] / sv[0]), "sv_count": int(sv.size),
            "first_client_labels": [int(v) for v in labels[:b]], "num_classes": int(classes)}


def main(argv=None) -> int:
    from benchmarks.leak_map import KINDS, run_cell
    from fl_defense.io import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="faces", help=f"one of {', '.join(KINDS)}")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--n", type=int, default=60, help="at least this many images")
    p.add_argument("--split", default="evaluation", choices=("evaluation", "tuning"))
    p.add_argument("--labels", default=DEFAULT_LABELLINGS, help="comma-separated labellings "
                   "(real, distinct-C, shared-C; see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key of the setting, under every labelling")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.kind not in KINDS:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {args.kind!r}")
        if min(args.batch_size, args.n) < 1:
            raise ValueError("--batch-size and --n must be >= 1")
        names = parse_labellings(args.labels)
        from experiments.setting import parse_sets
        from fl_defense.config import parse_run_config

        base = parse_sets(args.sets)
        cfg = parse_run_config({**base, "dataset": KINDS[args.kind]})
        from experiments.targets import dataset_targets

        dataset_targets(cfg.dataset, math.ceil(args.n / args.batch_size) * args.batch_size, args.seed,
                        cfg.data_dir, split=args.split)   # names --n when the split is smaller
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    rows = []
    for name in names:
        relabel = relabelling(name, args.batch_size)
        row = cached_row(out / "labellings" / f"{name}.json", lambda: {
            "labelling": name, "split": args.split,
            **run_cell(args.kind, args.batch_size, 1, args.n, args.seed, base, split=args.split, relabel=relabel),
            **spectrum_row(args.kind, args.batch_size, args.n, args.seed, base, relabel, args.split)})
        rows.append(row)
        print(f"{name:>12}: {row_summary(row)}; singular values / largest: median "
              f"{row['sv_median_ratio']:.1e}, smallest {row['sv_min_ratio']:.1e}", flush=True)
    write_json(out / "label_spread.json", {
        "command": command_line("label_spread", argv),
        "date": time.strftime("%Y-%m-%d"), "kind": args.kind, "B": args.batch_size, "K": 1,
        "split": args.split, "base": base, "rows": rows})
    print(f"wrote {out / 'label_spread.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
