"""``run_sim.py rescore PATH``: score the reconstructions an attack saved (``attack.npz`` of
``attack``, the ``.npz`` of every sweep cell, ``attack/round-NNN.npz`` of the hook) again,
with another decoy pool or leak threshold, without attacking again.

Each record is scored with the pool it names unless ``--decoys`` gives another (a folder,
or ``none``); ``--dataset`` takes that data set's test split as the pool instead.  The
table printed has one row per record (both criteria, with n, failed and the 95%
Clopper-Pearson intervals) and is written to ``rescore.csv`` in the folder (or next to a
single file); the records themselves are left as they are.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from fl_defense.config import ConfigError
from fl_defense.decoys import NO_DECOYS


def find_records(path: Path) -> list[Path]:
    """``path`` itself (a ``.npz``) or every reconstruction record below a folder."""
    from fl_defense.scoring import RECORD_FORMAT

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"rescore: {path} is neither a folder nor a file")
    found = []
    for p in sorted(path.rglob("*.npz")):
        try:
            import numpy as np

            with np.load(p, allow_pickle=False) as data:
                if "format" in data.files and str(data["format"]) == RECORD_FORMAT:
                    found.append(p)
        except (OSError, ValueError, EOFError):
            continue
    if not found:
        raise ConfigError(f"rescore: {path} holds no reconstruction record (.npz written by attack, sweep or the hook)")
    return found


def cmd_rescore(args) -> int:
    from fl_defense.decoys import pool_for_dataset, pool_from_folder, pool_from_spec
    from fl_defense.io import atomic_write_text
    from fl_defense.scoring import load_record, rescore
    from fl_defense.stats import leak_interval95

    if args.leak_threshold is not None and not 0 < args.leak_threshold <= 1:
        raise ConfigError(f"--leak-threshold must be in (0, 1], got {args.leak_threshold!r}")
    if args.decoys and args.dataset:
        raise ConfigError("give at most one of --decoys and --dataset")
    root = Path(args.path).resolve()
    paths = find_records(root)
    records = [(p, load_record(p)) for p in paths]  # a damaged record stops here, named
    pools: dict[str, object] = {}

    def pool_of(record):
        shape = record["truths"].shape
        if args.decoys == NO_DECOYS:
            return None
        if args.decoys:
            key = f"folder:{args.decoys}:{shape}"
            if key not in pools:
                pools[key] = pool_from_folder(args.decoys, int(shape[-1]), int(shape[1]))
            return pools[key]
        if args.dataset:
            key = f"dataset:{args.dataset}"
            if key not in pools:
                pools[key] = pool_for_dataset(args.dataset, args.data_dir or "", 0, args.decoy_pool_size)
            return pools[key]
        spec = record["meta"].get("decoy_spec")
        if not spec:
            return None
        key = json.dumps(spec, sort_keys=True)
        if key not in pools:
            pools[key] = pool_from_spec(spec)
        return pools[key]

    out_rows = []
    for path, record in records:
        threshold = args.leak_threshold if args.leak_threshold is not None else record["meta"]["leak-threshold"]
        pool = pool_of(record)
        s = rescore(record, threshold, pool).summary()
        n = s["images"]
        row = {"record": str(path.relative_to(root) if root.is_dir() else path.name), "n": n,
               "leaked": s["leaked"], "leaked_paper": s["leaked_paper"], "failed": s["failed"],
               "leak_threshold": threshold, "decoys": None if pool is None else pool.source}
        for suffix, k in (("", s["leaked"]), ("_paper", s["leaked_paper"])):
            lo, hi = leak_interval95(k, n) if k is not None else (None, None)
            row[f"ci95_low{suffix}"], row[f"ci95_high{suffix}"] = lo, hi
        out_rows.append(row)
        ident = "no decoys" if s["leaked"] is None else f"leaked {s['leaked']}/{n}"
        print(f"{row['record']}: {ident}, paper criterion {s['leaked_paper']}/{n}, failed {s['failed']} "
              f"(adjusted SSIM >= {threshold:g}; decoys: {row['decoys'] or 'none'})")
    fields = list(out_rows[0])
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in out_rows:
        w.writerow({k: "" if r[k] is None else r[k] for k in fields})
    target = (root if root.is_dir() else root.parent) / "rescore.csv"
    atomic_write_text(target, buf.getvalue())
    print(f"wrote {target}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("rescore", help="score saved reconstructions again with another decoy pool or threshold")
    p.add_argument("path", help="a folder of attack, sweep or run outputs, or one .npz record")
    p.add_argument("--decoys", metavar="DIR", help="a folder of public images as the pool ('none': no decoys)")
    p.add_argument("--dataset", help="the test split of this data set as the pool")
    p.add_argument("--data-dir", dest="data_dir", default="", help="folder of the torchvision data sets")
    p.add_argument("--decoy-pool-size", dest="decoy_pool_size", type=int, default=1000)
    p.add_argument("--leak-threshold", dest="leak_threshold", type=float, default=None,
                   help="default: the threshold each record was scored with")
    p.set_defaults(func=cmd_rescore)
