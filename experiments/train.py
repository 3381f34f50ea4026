"""Experiment 2, ``run_sim.py train``: the privacy-utility training grid (real Flower runs).

Every cell (partition, aggregation, defense) is one simulation with its own output folder;
a cell with a ``summary.json`` is finished and skipped, so an interrupted grid resumes.  The
tables and figures are rebuilt by :mod:`experiments.train_report`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from experiments.common import parse_list
from experiments.thresholds import read_thresholds
from fl_defense.config import ConfigError
from fl_defense.io import write_json
from fl_defense.partition import PartitionSpec

def cmd_train(args) -> int:
    from experiments.launcher import SimulationFailed, run_simulation
    from experiments.train_report import summarise_train
    from fl_defense.config import parse_run_config
    from fl_defense.defenses import parse_defense

    out = Path(args.out).resolve()
    aggregations = parse_list(args.aggregations, "--aggregations")
    partitions = parse_list(args.partitions, "--partitions")
    # the defenses and their strengths
    given = {}
    if args.thresholds:
        given.update(read_thresholds(Path(args.thresholds), args.threshold_dataset, args.attacker))
    for item in parse_list(args.defenses, "--defenses") if args.defenses else []:
        spec = parse_defense(item)
        if spec.value is not None:
            given[spec.name] = spec.value
        elif spec.name != "none":
            raise ConfigError(f"--defenses entry {item!r} needs a value (e.g. masking:0.5)")
    names = ["none"] + [d for d in ("masking", "clipping", "pruning", "noising") if d in given]
    missing = [d for d in ("masking", "clipping", "pruning", "noising") if d not in given]
    if missing:
        print(f"note: no threshold for {', '.join(missing)} (not in --thresholds / --defenses); "
              f"they are left out", file=sys.stderr)
    bn = args.model == "bncnn"
    specs = {"none": "none"}
    for d in names[1:]:
        name = "masking-bn" if (d == "masking" and bn) else d
        specs[d] = str(parse_defense(f"{name}:{given[d]}"))
    cells = []
    for partition in partitions:
        PartitionSpec.parse(partition)
        for aggregation in aggregations:
            for d in names:
                cells.append({"defense": d, "spec": specs[d], "aggregation": aggregation, "partition": partition})
    base = {"num-server-rounds": args.rounds, "num-clients": args.clients, "model": args.model,
            "dataset": args.dataset, "lr": args.lr, "local-steps": args.local_steps,
            "batch-size": args.batch_size, "seed": args.seed, "attack-every": args.attack_every,
            "attacker": args.attacker, "attack-max-iter": args.attack_max_iter}
    for cell in cells:  # validate every cell's config before anything runs
        cell["dir"] = out / "cells" / f"{cell['partition'].replace(':', '')}-{cell['aggregation']}-{cell['defense']}"
        cell["config"] = {**base, "defense": cell["spec"], "aggregation": cell["aggregation"],
                          "partition": cell["partition"], "out-dir": str(cell["dir"])}
        parse_run_config(cell["config"], require_out_dir=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "train", "base": base, "cells": [
        {k: v for k, v in c.items() if k != "dir"} for c in cells]})
    done = [c for c in cells if (c["dir"] / "summary.json").exists()]
    print(f"train: {len(cells)} cells ({len(done)} already done), {args.rounds} rounds x {args.clients} clients "
          f"each; output {out}", flush=True)
    start = time.perf_counter()
    for k, cell in enumerate(cells, 1):
        if (cell["dir"] / "summary.json").exists():
            continue
        label = f"[{k}/{len(cells)}] {cell['partition']} {cell['aggregation']} {cell['spec']}"
        print(f"{label} ...", end="", flush=True)
        try:
            res = run_simulation(cell["config"])
        except SimulationFailed as exc:
            print(f" FAILED: {exc}", flush=True)
            return 1
        print(f" accuracy {res.rows[-1].get('accuracy', float('nan')):.4f} ({res.seconds:.0f}s)", flush=True)
    summarise_train(out, cells, args)
    print(f"train done in {time.perf_counter() - start:.0f}s (this invocation); wrote final_accuracy.csv, "
          f"curves.png, frontier.png, hook_ssim.csv in {out}")
    print((out / "final_accuracy.md").read_text())
    return 0



def register(sub) -> None:
    t = sub.add_parser("train", help="experiment 2: the privacy-utility training grid (real Flower runs)")
    t.add_argument("--out", required=True)
    t.add_argument("--thresholds", help="a sweep's thresholds.csv")
    t.add_argument("--threshold-dataset", dest="threshold_dataset", default="mnist-embedded")
    t.add_argument("--defenses", help="comma-separated NAME:VALUE, overriding --thresholds")
    t.add_argument("--attacker", default="naive", choices=("naive", "aware"),
                   help="whose thresholds to train at (and the hook's attacker)")
    t.add_argument("--aggregations", default="mean,median")
    t.add_argument("--partitions", default="iid,dirichlet:0.5")
    t.add_argument("--rounds", type=int, default=20)
    t.add_argument("--clients", type=int, default=10)
    t.add_argument("--model", default="bncnn", choices=("lenet", "bncnn"))
    t.add_argument("--dataset", default="mnist-embedded")
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--local-steps", dest="local_steps", type=int, default=20)
    t.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    t.add_argument("--attack-every", dest="attack_every", type=int, default=10,
                   help="the hook attacks one client every N rounds (0: off)")
    t.add_argument("--attack-max-iter", dest="attack_max_iter", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)
