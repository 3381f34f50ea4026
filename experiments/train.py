"""Experiment 2, ``run_sim.py train``: the privacy-utility training grid (real Flower runs),
in the setting the sweep measured leakage in.

The grid trains, per partition and aggregation, no defense and each defense at three
strengths around its sweep threshold (:func:`grid_strengths`), takes the leak rate of each
trained strength from the sweep's cells (same setting), and lets the hook attack during
training.  ``--thresholds`` from a sweep of another setting is refused before any work
(exit 2), naming each key that differs (:mod:`experiments.setting`).

Every cell (partition, aggregation, defense, strength) is one simulation with its own
output folder; a cell with a ``summary.json`` is finished and skipped, so an interrupted
grid resumes.  The tables and figures are rebuilt by :mod:`experiments.train_report`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from experiments.common import fmt_strength, parse_list, write_meta
from experiments.thresholds import threshold_rows, tested_strengths
from experiments.setting import (add_setting_flags, defense_as_applied, setting_mismatches, setting_of,
                                 setting_overrides)
from fl_defense.config import ATTACKERS, ConfigError, ExperimentConfig, parse_run_config
from fl_defense.io import write_json
from fl_defense.partition import PartitionSpec

def grid_strengths(tested: list[float], naive: float | None, aware: float | None) -> list[float]:
    """Three strengths of a defense to train at, from the strengths the sweep tested
    (weakest first): one weaker than the naive attacker's threshold, the naive threshold,
    and one stronger -- the aware attacker's threshold when it is stronger, else the next
    tested strength.  A missing threshold (no tested strength stopped the attacker) counts
    as the strongest tested.  At the ends of the grid, what is there."""
    if not tested:
        return []
    pos = {v: i for i, v in enumerate(tested)}
    i = pos.get(naive, len(tested) - 1) if naive is not None else len(tested) - 1
    j = pos.get(aware, len(tested) - 1) if aware is not None else len(tested) - 1
    picks = {max(i - 1, 0), i, j if j > i else min(i + 1, len(tested) - 1)}
    near = sorted(range(len(tested)), key=lambda k: (abs(k - i), -k))
    for k in near:  # at an end of the grid: the nearest other tested strengths
        if len(picks) >= min(3, len(tested)):
            break
        picks.add(k)
    return [tested[k] for k in sorted(picks)]


def read_thresholds(path: Path, cfg: ExperimentConfig, dataset: str) -> dict[str, dict]:
    """Per defense, ``{"tested": [...], "naive": thr or None, "aware": thr or None}`` from a
    sweep's ``thresholds.csv`` (validated by :func:`experiments.thresholds.threshold_rows`),
    after checking that the sweep measured the rows of ``dataset`` in the setting of
    ``cfg`` (:class:`ConfigError` naming each key that differs)."""
    rows = [r for r in threshold_rows(path) if r["dataset"] == dataset]
    if not rows:
        raise ConfigError(f"thresholds file {path} has no rows for dataset {dataset!r}")
    differ = setting_mismatches(rows[0], cfg)
    if differ:
        raise ConfigError(f"thresholds file {path} was measured in another setting than this grid's: "
                          + "; ".join(differ))
    out: dict[str, dict] = {}
    for r in rows:
        entry = out.setdefault(r["defense"], {"tested": tested_strengths(r, f"thresholds file {path}, "
                                                                           f"line {r['line']}")})
        entry[r["attacker"]] = r["threshold"]
    return out


def train_config(args) -> ExperimentConfig:
    """The grid's setting (the setting flags) with its rounds and hook."""
    overrides = setting_overrides(args)
    for flag, key in (("rounds", "num-server-rounds"), ("attack_every", "attack-every"),
                      ("attack_clients", "attack-clients"), ("attack_max_iter", "attack-max-iter")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return parse_run_config(overrides)


def plan_cells(args, cfg: ExperimentConfig, out: Path) -> list[dict]:
    """Every cell of the grid, each config validated, before anything runs."""
    from fl_defense.defenses import parse_defense

    from experiments.sweep import default_defenses

    grid_defenses = default_defenses()
    strengths: dict[str, list[float]] = {}
    if args.thresholds:
        found = read_thresholds(Path(args.thresholds), cfg, args.threshold_dataset or cfg.dataset)
        for d in [*grid_defenses, *(d for d in found if d not in grid_defenses)]:
            if d in found:
                strengths[d] = grid_strengths(found[d]["tested"], found[d].get("naive"), found[d].get("aware"))
    for item in parse_list(args.defenses, "--defenses") if args.defenses else []:
        spec = parse_defense(item)
        if spec.value is None:
            raise ConfigError(f"--defenses entry {item!r} needs a value (e.g. masking:0.5)")
        strengths.setdefault(spec.name, [])
        if spec.value not in strengths[spec.name]:
            strengths[spec.name].append(spec.value)
    missing = [d for d in grid_defenses if d not in strengths]
    if missing:
        print(f"note: no strengths for {', '.join(missing)} (not in --thresholds / --defenses); they are left out",
              file=sys.stderr)
    specs = [("none", 0.0, "none")]
    for d, values in strengths.items():
        for v in values:
            specs.append((d, v, str(parse_defense(f"{defense_as_applied(d, cfg.model)}:{v}"))))
    cells = []
    for partition in parse_list(args.partitions, "--partitions"):
        PartitionSpec.parse(partition)
        for aggregation in parse_list(args.aggregations, "--aggregations"):
            for defense, strength, spec in specs:
                name = f"{partition.replace(':', '')}-{aggregation}-{defense}" + \
                    ("" if defense == "none" else f"={fmt_strength(strength)}")
                cell_dir = out / "cells" / name
                config = {**cfg.to_run_config(), "defense": spec, "aggregation": aggregation,
                          "partition": partition, "out-dir": str(cell_dir)}
                parse_run_config(config, require_out_dir=True)
                cells.append({"defense": defense, "strength": strength, "spec": spec, "aggregation": aggregation,
                              "partition": partition, "dir": cell_dir, "config": config})
    return cells


def cmd_train(args) -> int:
    began = time.perf_counter()  # the command's wall time, its validation and set-up included
    from tqdm import tqdm

    from experiments.launcher import SimulationFailed, run_simulation
    from experiments.train_report import summarise_train
    from fl_defense.datasets import check_dataset_available

    if args.attacker not in ATTACKERS:
        raise ConfigError(f"unknown attacker {args.attacker!r}; choose {', '.join(ATTACKERS)}")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.ray_address is not None:
        from experiments.launcher import check_ray_address

        args.ray_address = check_ray_address(args.ray_address, "--ray-address")
    cfg = replace(train_config(args), attacker=args.attacker)
    out = Path(args.out).resolve()
    cells = plan_cells(args, cfg, out)
    if args.later_sweep:  # a sweep from a trained checkpoint, in this grid's setting
        later = Path(args.later_sweep)
        later_csv = later / "thresholds.csv" if later.is_dir() else later
        if not later_csv.is_file():
            raise ConfigError(f"--later-sweep {args.later_sweep}: no thresholds.csv there (give a sweep's folder)")
        read_thresholds(later_csv, cfg, args.threshold_dataset or cfg.dataset)
    check_dataset_available(cfg.dataset, cfg.data_dir or None)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "train", "setting": setting_of(cfg), "thresholds": args.thresholds,
                                     "later_sweep": args.later_sweep,
                                     "cells": [{k: v for k, v in c.items() if k != "dir"} for c in cells]})
    todo = [c for c in cells if not (c["dir"] / "summary.json").exists()]
    print(f"train: {len(cells)} cells ({len(cells) - len(todo)} already done), {cfg.num_server_rounds} rounds x "
          f"{cfg.num_clients} clients each; output {out}", flush=True)
    failed: list[str] = []
    # side by side, each run gets its share of the cores, so that the hooks' attacks of two runs
    # do not put four OpenMP threads on two cores
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None
    with tqdm(total=len(todo) * cfg.num_server_rounds, unit="round", file=sys.stderr, disable=args.quiet) as bar:
        def one(cell: dict) -> None:
            if args.workers == 1:
                bar.set_description(f"{cell['partition']} {cell['aggregation']} {cell['spec']}")
            try:
                res = run_simulation(cell["config"], on_row=lambda row: bar.update(1), threads=threads,
                                     ray_address=args.ray_address, stop=stop)
            except SimulationFailed as exc:
                if stop.is_set():
                    return
                failed.append(cell["dir"].name)
                bar.write(f"{cell['dir'].name}: FAILED: {exc}")
                return
            bar.write(f"{cell['dir'].name}: accuracy {res.rows[-1].get('accuracy', float('nan')):.4f} "
                      f"({res.seconds:.0f}s)")

        # each cell its own simulation (SuperLink, Ray, ports); a failed cell does not stop the others
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=args.workers)
        try:
            list(pool.map(one, todo))
        except KeyboardInterrupt:  # Ctrl-C: the running cells stop within a poll, the waiting ones never start
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            print(f"train: interrupted; the finished cells are kept in {out}, run the same command again to resume",
                  file=sys.stderr, flush=True)
            return 130
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if failed:
        print(f"train: {len(failed)} cell(s) failed: {', '.join(failed)}; the finished cells are kept, run the "
              f"same command again to resume", flush=True)
        return 1
    summarise_train(out, cells, cfg, args.thresholds, args.threshold_dataset or cfg.dataset, later=args.later_sweep)
    seconds = time.perf_counter() - began
    write_meta(out, seconds=seconds)
    print(f"train done in {seconds:.0f}s (this invocation); wrote final_accuracy.csv, "
          f"curves.png, frontier.png, hook_leak.png, hook.csv in {out}")
    print((out / "final_accuracy.md").read_text())
    return 0


def register(sub) -> None:
    d = ExperimentConfig()
    t = sub.add_parser("train", help="experiment 2: the privacy-utility training grid (real Flower runs)")
    t.add_argument("--out", required=True)
    t.add_argument("--thresholds", help="a sweep's thresholds.csv, measured in this grid's setting")
    t.add_argument("--threshold-dataset", dest="threshold_dataset",
                   help="whose rows of --thresholds to use (default: the setting's --dataset)")
    t.add_argument("--later-sweep", dest="later_sweep", metavar="SWEEP_DIR",
                   help="a sweep of uploads from a trained model (sweep --checkpoint), in this grid's setting: its "
                        "leak rates beside round 1's (the _later columns, frontier_later.png)")
    t.add_argument("--defenses", help="comma-separated NAME:VALUE, trained besides (or instead of) --thresholds")
    t.add_argument("--attacker", default=d.attacker, help="the hook's attacker: naive | aware")
    t.add_argument("--aggregations", default="mean,median")
    t.add_argument("--partitions", default="iid,dirichlet:0.5")
    t.add_argument("--rounds", type=int, help=f"rounds per cell (default num-server-rounds, {d.num_server_rounds})")
    t.add_argument("--attack-every", dest="attack_every", type=int,
                   help=f"the hook attacks every N rounds (default attack-every, {d.attack_every}; 0: off)")
    t.add_argument("--attack-clients", dest="attack_clients", type=int,
                   help=f"clients the hook attacks (default {d.attack_clients})")
    t.add_argument("--attack-max-iter", dest="attack_max_iter", type=int,
                   help=f"the hook's iterations (default {d.attack_max_iter})")
    t.add_argument("--workers", type=int, default=1,
                   help="cells run side by side (each a Flower simulation of its own; default 1). Flower's rounds "
                        "wait on its polling more than on the CPU, so 2 on 2 cores finish the grid sooner")
    t.add_argument("--ray-address", dest="ray_address", metavar="HOST:PORT",
                   help="run each cell's clients on this running Ray cluster (its head's address, as `ray start "
                        "--head` prints it) instead of a Ray of the cell's own; one client per CPU of the cluster")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_setting_flags(t)
    t.set_defaults(func=cmd_train)
