"""Experiment 1, ``run_sim.py sweep``: per defense and data set, the weakest strength at
which the attack stops leaking.

The sweep is a grid of independent cells (data set, attacker, defense, strength).  A
finished cell is stored as its own files (written atomically) and never recomputed, so an
interrupted sweep resumes where it stopped; the tables and figures
(:mod:`experiments.sweep_report`) are rebuilt from the cells at the end of every invocation.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import add_attack_flags, attack_experiment_config, parse_list, with_attack
from experiments.sweep_report import summarise_sweep
from fl_defense.config import ConfigError
from experiments.sweep_cells import save_sweep_cell, sweep_cell_path
from fl_defense.io import write_json

# Strength grids, weakest first.  Masking and pruning: fraction of coordinates removed.
# Clipping: the L2 bound C of the update (-lr * g; smaller is stronger).  Noising: the
# standard deviation (Gaussian) or scale (Laplace) of the noise added to the update.
DEFAULT_GRIDS = {
    "masking": [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
    "pruning": [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
    "clipping": [1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
    "noising": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "noising-laplace": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
}
SWEEP_DEFENSES = ("masking", "pruning", "clipping", "noising")


def _parse_grid(text: str | None, defense: str) -> list[float]:
    if not text:
        return list(DEFAULT_GRIDS[defense])
    try:
        return [float(x) for x in parse_list(text, f"--grid-{defense}")]
    except ValueError:
        raise ConfigError(f"--grid-{defense} must be comma-separated numbers, got {text!r}") from None



def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from experiments.single_image import attack_images
    from experiments.targets import dataset_targets
    from fl_defense.datasets import DATASET_NAMES, check_dataset_available
    from fl_defense.defenses import parse_defense
    from fl_defense.task import select_device

    datasets = parse_list(args.datasets, "--datasets")
    defenses = parse_list(args.defenses, "--defenses")
    attackers = parse_list(args.attackers, "--attackers")
    for d in datasets:
        if d not in DATASET_NAMES:
            raise ConfigError(f"unknown dataset {d!r} in --datasets; choose from {', '.join(DATASET_NAMES)}")
    for a in attackers:
        if a not in ("naive", "aware"):
            raise ConfigError(f"unknown attacker {a!r} in --attackers; choose naive, aware")
    grids = {}
    for d in defenses:
        if d not in DEFAULT_GRIDS:
            raise ConfigError(f"unknown defense {d!r} in --defenses; choose from {', '.join(DEFAULT_GRIDS)}")
        grids[d] = _parse_grid(getattr(args, f"grid_{d.replace('-', '_')}", None), d)
        for v in grids[d]:
            parse_defense(f"{d}:{v}")  # validates the range, naming the value
    if not 0 <= args.max_leak_rate < 1:
        raise ConfigError(f"--max-leak-rate must be in [0, 1), got {args.max_leak_rate!r}")
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n!r}")
    cfg = attack_experiment_config(args)
    device = str(select_device())
    for d in datasets:
        check_dataset_available(d, args.data_dir or None)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "sweep", "datasets": datasets, "defenses": defenses,
                                     "attackers": attackers, "grids": grids, "n": args.n,
                                     "max_leak_rate": args.max_leak_rate, "chunk": args.chunk,
                                     "device": device, **cfg.to_run_config()})
    cells = [(ds, a, d, s) for ds in datasets for a in attackers for d in defenses for s in grids[d]]
    todo = [c for c in cells if not sweep_cell_path(out, c[0], c[2], c[1], c[3]).exists()]
    print(f"sweep: {len(cells)} cells ({len(cells) - len(todo)} already done) x {args.n} images; "
          f"output {out}", flush=True)
    targets = {ds: dataset_targets(ds, args.n, cfg.seed, cfg.data_dir) for ds in datasets}
    # the undefended baseline of each data set (and attacker), for the tables
    baselines = [(ds, a, "none", 0.0) for ds in datasets for a in attackers]
    todo = [c for c in baselines if not sweep_cell_path(out, c[0], c[2], c[1], c[3]).exists()] + todo
    # All missing strengths of one (data set, attacker, defense) are attacked together, in
    # one vectorised batch of chunk-sized pieces; each cell is then stored on its own.
    groups: dict[tuple, list] = {}
    for ds, attacker, defense, strength in todo:
        groups.setdefault((ds, attacker, defense), []).append(strength)
    start = time.perf_counter()
    with tqdm(total=len(todo) * args.n, unit="attack", file=sys.stderr, disable=args.quiet) as bar:
        for (ds, attacker, defense), strengths in groups.items():
            images, labels, names, num_classes = targets[ds]
            specs = [parse_defense("none" if defense == "none" else f"{defense}:{s}") for s in strengths]
            bar.set_description(f"{ds} {attacker} {defense}")
            k = len(images)
            scores, rows = attack_images(np.concatenate([images] * len(specs)), np.concatenate([labels] * len(specs)),
                                         num_classes, [sp for sp in specs for _ in range(k)],
                                         with_attack(cfg, attacker=attacker), device=device, chunk=args.chunk,
                                         progress=bar.update, client_ids=list(range(k)) * len(specs))
            for j, strength in enumerate(strengths):
                part = slice(j * k, (j + 1) * k)
                save_sweep_cell(out, ds, attacker, defense, strength, rows[part], names, scores.truths[part],
                                scores.recons[part], scores.adjusted[part])
    summarise_sweep(out, datasets, defenses, attackers, grids, args.max_leak_rate, cfg.leak_threshold)
    print(f"sweep done in {time.perf_counter() - start:.0f}s (this invocation); wrote "
          f"{out / 'thresholds.csv'}, thresholds.md, ssim_vs_strength.png, grids/")
    print((out / "thresholds.md").read_text())
    return 0


def register(sub) -> None:
    p = sub.add_parser("sweep", help="experiment 1: the minimum strength at which each defense stops iDLG")
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", default="mnist-embedded", help="comma-separated data sets")
    p.add_argument("--defenses", default=",".join(SWEEP_DEFENSES), help="comma-separated defenses")
    p.add_argument("--attackers", default="naive,aware", help="comma-separated: naive, aware")
    p.add_argument("--n", type=int, default=8, help="images attacked per cell")
    p.add_argument("--max-leak-rate", dest="max_leak_rate", type=float, default=0.0,
                   help="a defense's threshold is the weakest strength whose leak rate is at most this")
    for d in DEFAULT_GRIDS:
        p.add_argument(f"--grid-{d}", dest=f"grid_{d.replace('-', '_')}",
                       help=f"comma-separated strengths, weakest first (default {DEFAULT_GRIDS[d]})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_attack_flags(p)
    # one restart (not two): a defended target never converges, so each restart costs a
    # full try; the budget goes to more strengths and images instead
    p.set_defaults(func=cmd_sweep, restarts=1)
