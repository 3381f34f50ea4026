"""The command line behind ``run_sim.py`` (argument parsing and the ``run`` command)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
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


def resume_config(args: argparse.Namespace) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The run config that continues the run in ``--resume DIR`` (its recorded config,
    ``resume = true``) and the rows it has done; ``None`` when that run is complete.

    Refused (:class:`ConfigError`, exit 2) before anything starts: a folder without a
    readable ``config.json``, a damaged checkpoint, a checkpoint of another config, and
    any flag that would change the recorded config (each differing key is named)."""
    from strategies.checkpoint import checkpoint_for, checkpoint_rows, config_differences, recorded_config
    from fl_defense.task import get_weights, new_model

    folder = Path(args.resume).resolve()
    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: no such folder")
    path = folder / "config.json"
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--resume {folder}: it holds no config.json (not a run folder, or its run "
                          f"stopped before round 1 started)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {path} is unreadable ({exc})") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"--resume: {path} is not a JSON object")
    try:
        cfg = parse_run_config({**recorded, "out-dir": str(folder)})
    except ConfigError as exc:
        raise ConfigError(f"--resume: {path}: {exc}") from None
    given = parse_run_config({**recorded, **run_config_from_args(args, folder)})
    differ = config_differences(recorded_config(cfg), recorded_config(given))
    if args.out is not None and args.out.resolve() != folder:
        differ.append(f"out-dir (resuming {str(folder)!r}, --out {str(args.out.resolve())!r})")
    if differ:
        raise ConfigError(f"--resume {folder}: refused, the flags would change the recorded config: "
                          f"{'; '.join(differ)}")
    checkpoint = checkpoint_for(folder, cfg, [w.shape for w in get_weights(new_model(cfg))])
    if (folder / "summary.json").exists():
        return None
    return ({**recorded_config(cfg), "out-dir": str(folder), "resume": True},
            checkpoint_rows(checkpoint) if checkpoint else [])


def cmd_run(args: argparse.Namespace) -> int:
    from experiments.launcher import SimulationFailed, run_simulation
    from fl_defense.task import check_run_inputs

    done: list[dict[str, Any]] = []
    if args.resume:
        resumed = resume_config(args)
        if resumed is None:
            print(f"{Path(args.resume).resolve()} holds a completed run (summary.json); nothing to resume")
            return 0
        run_config, done = resumed
    else:
        run_config = run_config_from_args(args, args.out or default_out_dir("run"))
    cfg = parse_run_config(run_config, require_out_dir=True)  # fail before anything starts
    check_run_inputs(cfg)  # the data set's files, the partitions
    out = Path(cfg.out_dir)
    print(f"fl-defense: {cfg.num_clients} clients, {cfg.num_server_rounds} rounds, dataset {cfg.dataset}, "
          f"partition {cfg.partition}, model {cfg.model}, defense {cfg.defense}, strategy {cfg.strategy}"
          f"{'/' + cfg.aggregation if cfg.strategy == 'fl-defense' else ''}; output {out}", flush=True)
    if args.resume:
        print(f"resuming after round {len(done)} of {cfg.num_server_rounds} (rows from the checkpoint first)",
              flush=True)
    print(format_row({}, header=True), flush=True)
    for row in done:
        print(format_row(row), flush=True)
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
    from experiments import attack_cmd, listings, rescore, sweep, train

    for command in (attack_cmd, sweep, train, rescore, listings):
        command.register(sub)
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    parser = build_parser()
    commands = {"run", "attack", "sweep", "train", "rescore", "defenses", "models", "datasets", "strategies", "-h",
                "--help"}
    if not argv or argv[0] not in commands:
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # bad input: nothing started
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
