"""Benchmark: where leakage stops for this attack, over batch size B and local steps K.

For every kind of data (``digits``: ``mnist-embedded``, ``faces``: ``lfw-embedded``,
``colour``: ``colour-embedded``) and every cell (B, K), clients each train K SGD steps of B
over N = K * B images of the evaluation split (one epoch, so the batch order needs no
assumption) the way ``fit`` does, in the setting's model and learning rate, no defense, and
the server inverts every upload with labels inferred
(:func:`experiments.client_attack.attack_clients`, all clients of a cell in one call).
Enough clients for at least ``--n`` images a cell (``ceil(n / N)``).  Every image is scored
by both criteria against the data set's test split (:mod:`fl_defense.scoring`).

Each finished cell is written to ``--out`` as ``cells/<kind>-B<b>-K<k>.json`` (atomically)
and skipped when the command runs again, so an interrupted map resumes.  At the end the
command writes ``leak_map.csv`` (one row per cell: n, both criteria's leaked counts, rates
and 95% Clopper-Pearson intervals, label accuracy, seconds per client; ``leak_map.json``
besides the counts per label, ``by_label``) and
``leak_map.png`` (one heat map per kind, identification rate with k/n).  ``--max-n`` leaves
out the cells with more than that many images a client (N = K B): blank in the heat map,
absent from the CSV, for maps whose largest cells would take hours on a CPU.  A cell whose
N is more than the images of the data set's evaluation split (the embedded faces: 60) is
left out the same way and listed under ``left_out`` in ``leak_map.json``.

    python -m benchmarks.leak_map --out docs/results/leak_map
    python -m benchmarks.leak_map --kinds digits --batch-sizes 1,4 --local-steps 1 --n 8 --out /tmp/map
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.rows import cached_row, command_line, row_summary

KINDS = {"digits": "mnist-embedded", "faces": "lfw-embedded", "colour": "colour-embedded"}


def cell_path(out: Path, kind: str, b: int, k: int) -> Path:
    return out / "cells" / f"{kind}-B{b}-K{k}.json"


def run_cell(kind: str, b: int, k: int, n: int, seed: int, overrides: dict, split: str = "evaluation",
             relabel=None) -> dict:
    """Attack one cell; its row (see the module docstring).  ``split="tuning"`` attacks images
    of the test split instead, which the decoy pool then leaves out.  ``relabel(labels) ->
    (labels, num_classes)`` trains the clients on other labels of the same images (the row's
    ``by_label`` still counts by the data set's labels)."""
    from experiments.client_attack import attack_clients
    from experiments.setting import EXPERIMENT_MAX_ITER
    from experiments.targets import dataset_targets
    from fl_defense.config import parse_run_config
    from fl_defense.decoys import pool_for_dataset
    from fl_defense.stats import leak_interval95

    per = k * b
    clients = math.ceil(n / per)
    dataset = KINDS[kind]
    cfg = parse_run_config({"attack-max-iter": EXPERIMENT_MAX_ITER, **overrides, "dataset": dataset,
                            "local-steps": k, "batch-size": b, "images-per-client": per, "seed": seed})
    t = dataset_targets(dataset, clients * per, seed, cfg.data_dir, shuffle=True, split=split)
    pool = pool_for_dataset(dataset, cfg.data_dir, seed, cfg.decoy_pool_size, exclude=t.test_positions)
    labels, num_classes = (t.labels, t.num_classes) if relabel is None else relabel(t.labels)
    start = time.perf_counter()
    sc, rows, res = attack_clients(cfg, t.images, labels, num_classes, device="cpu", pool=pool,
                                   decoy_labels=t.labels)
    seconds = time.perf_counter() - start
    by_label = dataclasses.replace(sc, label_true=t.labels[[r["image"] for r in rows]]).by_label(t.class_names)
    row = {"kind": kind, "dataset": dataset, "B": b, "K": k, "N": per, "clients": clients, "n": sc.n,
           "model": cfg.model, "lr": cfg.lr, "attack_max_iter": cfg.attack_max_iter,
           "attack_restarts": cfg.attack_restarts, "attack_patience": cfg.attack_patience, "attack_tv": cfg.attack_tv,
           "label_acc": float(np.mean(sc.label_pred == sc.label_true)), "failed": int(sc.failed.sum()),
           "seconds_per_client": seconds / clients, "decoys": pool.source,
           "by_label": [{"label": label, **counts} for label, counts in by_label.items()]}
    for name, flags in (("", sc.leaked), ("_paper", sc.leaked_paper)):
        hit = int(flags.sum())
        lo, hi = leak_interval95(hit, sc.n)
        row.update({f"leaked{name}": hit, f"leak_rate{name}": hit / sc.n, f"ci95_low{name}": lo,
                    f"ci95_high{name}": hi})
    return row


def evaluation_size(dataset: str, data_dir: str, seed: int) -> int:
    """The number of images of a data set's evaluation split (the most a cell's client can
    train on in one epoch of distinct images)."""
    from fl_defense.datasets import load_dataset

    train, _ = load_dataset(dataset, data_dir=data_dir or None, seed=seed)
    return len(train.labels)


def heat_maps(rows: list[dict], kinds: list[str], bs: list[int], ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fl_defense.io import save_figure

    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds) + 0.8, 3.0), squeeze=False)
    im = None
    for i, kind in enumerate(kinds):
        ax = axes[0, i]
        grid = np.full((len(ks), len(bs)), np.nan)
        for r in rows:
            if r["kind"] == kind and r["B"] in bs and r["K"] in ks:
                grid[ks.index(r["K"]), bs.index(r["B"])] = r["leak_rate"]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(bs)), [str(b) for b in bs])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("batch size B")
        ax.set_ylabel("local steps K (N = K B)")
        models = sorted({r["model"] for r in rows if r["kind"] == kind})
        ax.set_title(f"{kind} ({', '.join(models)}): identified", fontsize=9)
        for r in rows:
            if r["kind"] == kind and r["B"] in bs and r["K"] in ks:
                ax.text(bs.index(r["B"]), ks.index(r["K"]), f"{r['leaked']}/{r['n']}", ha="center", va="center",
                        fontsize=7, color="white" if r["leak_rate"] < 0.5 else "black")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="leak rate (identification)")
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from fl_defense.io import atomic_write_text, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--local-steps", default="1,2,4")
    p.add_argument("--n", type=int, default=16, help="at least this many private images a cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key of the setting (e.g. model=resnet8, attack-max-iter=1000)")
    p.add_argument("--max-n", dest="max_n", type=int, default=None, metavar="N",
                   help="leave out the cells with more than N = K B images a client (default: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        kinds = [s.strip() for s in args.kinds.split(",") if s.strip()]
        bs = [int(v) for v in args.batch_sizes.split(",")]
        ks = [int(v) for v in args.local_steps.split(",")]
        bad = [s for s in kinds if s not in KINDS]
        if bad or min(bs + ks) < 1 or args.n < 1 or (args.max_n is not None and args.max_n < min(bs) * min(ks)):
            raise ValueError(f"kinds must be among {', '.join(KINDS)} (got {bad}); B, K and n >= 1; --max-n "
                             f"at least the smallest cell's K B (got {args.max_n})")
        from experiments.setting import parse_sets
        from fl_defense.config import parse_run_config

        overrides = parse_sets(args.sets)
        cfg = parse_run_config(overrides)
        sizes = {kind: evaluation_size(KINDS[kind], cfg.data_dir, args.seed) for kind in kinds}
        if not any(b * k <= sizes[kind] and (args.max_n is None or b * k <= args.max_n)
                   for kind in kinds for k in ks for b in bs):
            raise ValueError(f"no cell to run: every N = K B is more than --max-n or than the evaluation "
                             f"split's images ({', '.join(f'{kind} {n}' for kind, n in sizes.items())})")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    rows, left_out = [], []
    for kind in kinds:
        for k in ks:
            for b in bs:
                if args.max_n is not None and b * k > args.max_n:
                    continue
                if b * k > sizes[kind]:
                    left_out.append({"kind": kind, "B": b, "K": k, "N": b * k, "evaluation_images": sizes[kind]})
                    print(f"{kind:>6} B={b:<2} K={k} N={b * k:<3} left out: a client's epoch of N images is more "
                          f"than the {sizes[kind]} images of the evaluation split", flush=True)
                    continue
                row = cached_row(cell_path(out, kind, b, k),
                                 lambda: run_cell(kind, b, k, args.n, args.seed, overrides))
                rows.append(row)
                print(f"{kind:>6} B={b:<2} K={k} N={row['N']:<3} {row_summary(row)}", flush=True)
    # the CSV holds the scalar columns (the per-label counts are in the JSON); a cell read back
    # from cells/ may lack a column that the others have: empty there
    fields = [f for f in dict.fromkeys(k for r in rows for k in r)
              if not any(isinstance(r.get(f), (dict, list)) for r in rows)]
    lines = [",".join(fields)] + [",".join("" if f not in r else json.dumps(r[f]) if isinstance(r[f], str)
                                           else f"{r[f]}" for f in fields) for r in rows]
    atomic_write_text(out / "leak_map.csv", "\n".join(lines) + "\n")
    write_json(out / "leak_map.json", {
        "command": command_line("leak_map", argv),
        "date": time.strftime("%Y-%m-%d"), "max_n": args.max_n, "left_out": left_out, "rows": rows})
    heat_maps(rows, kinds, bs, ks, out / "leak_map.png")
    print(f"wrote {out / 'leak_map.csv'} and {out / 'leak_map.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
