"""The command line behind ``run_sim.py`` (argument parsing and the ``run`` command)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from experiments.run_flags import add_run_flags, default_out_dir, run_config_from_args
from fl_defense.config import ConfigError, parse_run_config

COLUMNS = [("round", "round", "{:>5}"), ("accuracy", "acc", "{:>7.4f}"), ("loss", "loss", "{:>8.4f}"),
           ("train_loss", "train", "{:>8.4f}"), ("clients_ok", "ok", "{:>3}"),
           ("clients_failed", "fail", "{:>4}"), ("attack_ssim_mean", "ssim", "{:>6.3f}"),
           ("attack_ssim_adjusted_mean", "ssim*", "{:>6.3f}"), ("attack_leaked", "leak", "{:>4}"),
           ("seconds", "sec", "{:>7.1f}")]


def format_row(row: dict[str, Any], header: bool = False) -> str:
    """One line of the per-round table (or its header)."""
    cells = []
    for key, title, fmt in COLUMNS:
        width = len(fmt.format(0.0 if "f}" in fmt else 0))
        value = row.get(key)
        if header:
            cells.append(title.rjust(width))
        elif value is None or (isinstance(value, float) and value != value):
            cells.append("-".rjust(width))
        else:
            cells.append(fmt.format(value))
    return " ".join(cells)


def cmd_run(args: argparse.Namespace) -> int:
    from experiments.launcher import SimulationFailed, run_simulation

    out = args.out or default_out_dir("run")
    run_config = run_config_from_args(args, out)
    cfg = parse_run_config(run_config, require_out_dir=True)  # fail before anything starts
    from fl_defense.datasets import check_dataset_available

    check_dataset_available(cfg.dataset, cfg.data_dir or None)
    print(f"fl-defense: {cfg.num_clients} clients, {cfg.num_server_rounds} rounds, dataset {cfg.dataset}, "
          f"partition {cfg.partition}, model {cfg.model}, defense {cfg.defense}, strategy {cfg.strategy}"
          f"{'/' + cfg.aggregation if cfg.strategy == 'fl-defense' else ''}; output {out.resolve()}",
          flush=True)
    print(format_row({}, header=True), flush=True)
    try:
        result = run_simulation(run_config, on_row=lambda r: print(format_row(r), flush=True))
    except SimulationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    final = result.rows[-1]
    print(f"done in {result.seconds:.0f}s: final accuracy {final.get('accuracy', float('nan')):.4f}; "
          f"wrote {result.out_dir / 'metrics.jsonl'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run_sim.py", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p_run = sub.add_parser("run", help="one federated experiment through Flower's simulation engine")
    add_run_flags(p_run)
    p_run.set_defaults(func=cmd_run)
    from experiments import attack_cmd, sweep, train

    for command in (attack_cmd, sweep, train):
        command.register(sub)
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    parser = build_parser()
    commands = {"run", "attack", "sweep", "train", "-h", "--help"}
    if not argv or argv[0] not in commands:
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
