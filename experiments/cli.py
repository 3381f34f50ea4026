"""The command line behind ``run_sim.py`` (argument parsing and the ``run`` command)."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

from fl_defense.config import ConfigError, parse_run_config

# flag -> config key, for the `run` command
RUN_FLAGS = {
    "rounds": "num-server-rounds",
    "clients": "num-clients",
    "dataset": "dataset",
    "data_dir": "data-dir",
    "partition": "partition",
    "model": "model",
    "local_steps": "local-steps",
    "batch_size": "batch-size",
    "lr": "lr",
    "defense": "defense",
    "strategy": "strategy",
    "aggregation": "aggregation",
    "seed": "seed",
    "attack_every": "attack-every",
    "attacker": "attacker",
    "secagg": "secure-aggregation",
}


def parse_set_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value, read as TOML (``3``, ``0.5``, ``true``, ``"x"``) or
    else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def default_out_dir(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / "runs" / f"{kind}-{stamp}"


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: ./runs/run-<time>)")
    p.add_argument("--rounds", type=int, help="number of server rounds")
    p.add_argument("--clients", type=int, help="number of clients (SuperNodes)")
    p.add_argument("--dataset", help="mnist-embedded (default) | lfw-embedded | mnist | cifar10 | lfw")
    p.add_argument("--data-dir", dest="data_dir", help="folder for torchvision data sets")
    p.add_argument("--partition", help="iid | dirichlet:ALPHA | pathological:K")
    p.add_argument("--model", help="lenet | bncnn")
    p.add_argument("--local-steps", dest="local_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--defense", help="none | masking:P | masking-bn:P | clipping:C | pruning:P | "
                                     "noising:SIGMA | noising-laplace:B")
    p.add_argument("--strategy", help="fl-defense | FedAvg | FedMedian | FedTrimmedAvg | Krum")
    p.add_argument("--aggregation", help="mean | median (strategy fl-defense)")
    p.add_argument("--seed", type=int)
    p.add_argument("--attack-every", dest="attack_every", type=int,
                   help="run the honest-but-curious iDLG hook every N rounds (0: off)")
    p.add_argument("--attacker", help="naive | aware")
    p.add_argument("--secagg", action="store_const", const=True, default=None,
                   help="secure aggregation (SecAgg+): the server sees only the aggregate of the uploads")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any key of [tool.flwr.app.config], e.g. --set dropout-rate=0.1")


def run_config_from_args(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, key in RUN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_set_value(value.strip())
    overrides["out-dir"] = str(out.resolve())
    return overrides


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
