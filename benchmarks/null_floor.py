"""Benchmark: how often each leak criterion fires on reconstructions that hold nothing of the
private image (the null floor).

For each embedded kind of data (digits, faces, colour), the private images are the
evaluation split (the train split the clients hold) and the decoy pool is the data set's
test split (:func:`fl_defense.decoys.pool_for_dataset`, mirrored where flips are images of
the kind).  Every private image gets six "reconstructions" that invert nothing:

* ``blank`` (all zeros), ``grey`` (all 0.5), ``noise`` (uniform, seeded);
* ``mean image`` -- the mean of the public pool;
* ``label-only`` -- what an attacker that recovers the label and inverts nothing returns:
  the mean public image of the private image's label;
* ``best public image`` -- the public image of the same label most similar to the private
  image (an oracle's pick among public data: the best a copy of public data can do).

Each is scored by both criteria (:func:`fl_defense.scoring.score`): the paper's (adjusted
SSIM >= the threshold) and identification (and closer to the private image than to every
decoy), and by identification against the decoys of the image's label only
(``match_labels``), the variant the default is measured against.  Prints, per kind and null,
the rate, k/n and the 95% Clopper-Pearson interval of each, and writes them to ``--out``
(``null_floor.csv``, ``null_floor.json``).

    python -m benchmarks.null_floor
    python -m benchmarks.null_floor --n 64 --out docs/results/null_floor
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

KINDS = {"digits": "mnist-embedded", "faces": "lfw-embedded", "colour": "colour-embedded"}
NULLS = ("blank", "grey", "noise", "mean image", "label-only", "best public image")


def null_reconstructions(private: np.ndarray, labels: np.ndarray, pool, seed: int) -> dict[str, np.ndarray]:
    """Every null kind's reconstruction of every private image: ``{kind: [n, C, H, W]}``."""
    from fl_defense import metrics

    from dataclasses import replace

    public, plabels = pool.images.images.astype(np.float32), pool.labels
    same_label = replace(pool, match_labels=True)
    rng = np.random.default_rng(seed)
    mean = public.mean(0)
    class_mean = {int(c): public[plabels == c].mean(0) for c in np.unique(plabels)}
    best = []
    for x, y in zip(private, labels):
        idx = same_label.candidates(int(y))
        best.append(public[idx][int(np.argmax(metrics.ssim_adjusted_many(public[idx], x)))])
    return {"blank": np.zeros_like(private), "grey": np.full_like(private, 0.5),
            "noise": rng.random(private.shape).astype(np.float32),
            "mean image": np.repeat(mean[None], len(private), 0),
            "label-only": np.stack([class_mean.get(int(y), mean) for y in labels]),
            "best public image": np.stack(best)}


def measure(kind: str, dataset: str, n: int, seed: int, threshold: float) -> list[dict]:
    from fl_defense.datasets import load_dataset
    from fl_defense.decoys import pool_for_dataset
    from fl_defense.scoring import score
    from fl_defense.stats import leak_interval95

    train, _ = load_dataset(dataset, seed=seed)
    rng = np.random.default_rng([seed, 7])
    idx = np.sort(rng.choice(len(train.labels), size=min(n, len(train.labels)), replace=False))
    private, labels = train.images[idx], train.labels[idx]
    from dataclasses import replace

    pool = pool_for_dataset(dataset, seed=seed)
    same_label = replace(pool, match_labels=True)
    rows = []
    for null, recons in null_reconstructions(private, labels, pool, seed).items():
        args = ([x[None] for x in private], [np.array([y]) for y in labels], [r[None] for r in recons],
                [np.array([y]) for y in labels], threshold)
        s = score(*args, pool)
        same = score(*args, same_label)
        k = len(labels)
        row = {"kind": kind, "dataset": dataset, "null": null, "n": k, "decoys": pool.source,
               "leak_threshold": threshold}
        for name, flags in (("paper", s.leaked_paper), ("identification", s.leaked),
                            ("identification_same_label", same.leaked)):
            hit = int(flags.sum())
            lo, hi = leak_interval95(hit, k)
            row.update({f"{name}_leaked": hit, f"{name}_rate": hit / k, f"{name}_ci95_low": lo,
                        f"{name}_ci95_high": hi})
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--n", type=int, default=256, help="private images per kind (at most the train split)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--leak-threshold", type=float, default=0.4)
    p.add_argument("--out", type=Path, default=None, help="write null_floor.csv and null_floor.json here")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or args.n < 1 or not 0 < args.leak_threshold <= 1:
        print(f"error: unknown kind(s) {bad}" if bad else "error: --n must be >= 1 and --leak-threshold in (0, 1]",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = [r for k in kinds for r in measure(k, KINDS[k], args.n, args.seed, args.leak_threshold)]
    print(f"Null reconstructions scored by both criteria (adjusted SSIM >= {args.leak_threshold}; identification: "
          f"also closer to the private image than to every decoy, and closer to it than every decoy is; the last "
          f"column compares each with the decoys of its label only); rate (k/n, 95% CI)\n")
    print(f"{'kind':<7} {'null':<18} {'paper criterion':<29} {'identification':<29} "
          f"{'identification, same-label decoys'}")
    for r in rows:
        cols = [f"{r[f'{c}_rate']:6.1%} ({r[f'{c}_leaked']}/{r['n']}, {r[f'{c}_ci95_low']:.1%}-"
                f"{r[f'{c}_ci95_high']:.1%})" for c in ("paper", "identification", "identification_same_label")]
        print(f"{r['kind']:<7} {r['null']:<18} {cols[0]:<29} {cols[1]:<29} {cols[2]}")
    for k in kinds:
        print(f"decoys ({k}): {next(r['decoys'] for r in rows if r['kind'] == k)}")
    worst = max(r["identification_rate"] for r in rows)
    print(f"\nidentification fires on at most {worst:.1%} of the images of any null row "
          f"({time.perf_counter() - start:.0f} s)")
    if args.out:
        from fl_defense.io import atomic_write_text, write_json

        args.out.mkdir(parents=True, exist_ok=True)
        fields = list(rows[0])
        lines = [",".join(fields)] + [",".join(json.dumps(r[f]) if isinstance(r[f], str) else f"{r[f]}"
                                               for f in fields) for r in rows]
        atomic_write_text(args.out / "null_floor.csv", "\n".join(lines) + "\n")
        write_json(args.out / "null_floor.json", {"command": "python -m benchmarks.null_floor " + " ".join(
            argv if argv is not None else sys.argv[1:]), "date": time.strftime("%Y-%m-%d"), "rows": rows})
        print(f"wrote {args.out / 'null_floor.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
