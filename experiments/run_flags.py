"""The flags of a run: each maps to a key of ``[tool.flwr.app.config]``; ``--set KEY=VALUE``
reaches any key."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
from pathlib import Path
from typing import Any

from experiments.setting import PRESETS, parse_sets
from fl_defense.config import ConfigError
from fl_defense.datasets import DATASETS
from fl_defense.defenses import DEFENSES
from fl_defense.models import MODELS
from fl_defense.strategy_catalogue import STRATEGIES

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
    "images_per_client": "images-per-client",
    "lr": "lr",
    "defense": "defense",
    "strategy": "strategy",
    "aggregation": "aggregation",
    "seed": "seed",
    "attack_every": "attack-every",
    "attacker": "attacker",
    "attack_workers": "attack-workers",
    "secagg": "secure-aggregation",
}
#: ``run``'s number of attack worker processes when no flag names one, on two cores or more
ATTACK_WORKERS = 1


def default_attack_workers() -> int:
    """``run``'s ``attack-workers`` unless given: :data:`ATTACK_WORKERS` worker process(es) where
    the process may use two cores or more (the attacks run beside the training), 0 (attacks
    in the ServerApp's process) on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return ATTACK_WORKERS if cores >= 2 else 0


def defense_choices_text() -> str:
    """``none | masking:P | ...``: every registered defense with its strength's symbol."""
    return " | ".join(d.name if d.value_name is None else f"{d.name}:{d.value_name.upper()}"
                      for d in DEFENSES.entries())


def default_out_dir(kind: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / "runs" / f"{kind}-{stamp}"


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (default: ./runs/run-<time>)")
    p.add_argument("--rounds", type=int, help="number of server rounds")
    p.add_argument("--clients", type=int, help="number of clients (SuperNodes)")
    p.add_argument("--dataset", help=f"{DATASETS.choices_text()} | folder:/ABS/DIR")
    p.add_argument("--data-dir", dest="data_dir", help="folder for torchvision data sets")
    p.add_argument("--partition", help="iid | dirichlet:ALPHA | pathological:K")
    p.add_argument("--model", help=MODELS.choices_text())
    p.add_argument("--local-steps", dest="local_steps", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--images-per-client", dest="images_per_client", type=int,
                   help="images a client draws from its partition each round (0: all of it)")
    p.add_argument("--lr", type=float)
    p.add_argument("--defense", help=defense_choices_text())
    p.add_argument("--strategy", help=STRATEGIES.choices_text())
    p.add_argument("--aggregation", help="mean | median (strategy fl-defense)")
    p.add_argument("--seed", type=int)
    p.add_argument("--attack-every", dest="attack_every", type=int,
                   help="run the honest-but-curious iDLG hook every N rounds (0: off)")
    p.add_argument("--attacker", help="naive | aware")
    p.add_argument("--attack-workers", dest="attack_workers", type=int, metavar="N",
                   help="worker processes that run the hook's attacks while the federation goes on (default: "
                        f"{ATTACK_WORKERS} on two cores or more, else 0; 0: the ServerApp attacks each round before "
                        "the next begins); the figures are the same either way")
    p.add_argument("--secagg", action="store_const", const=True, default=None,
                   help="secure aggregation (SecAgg+): the server sees only the aggregate of the uploads")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any key of [tool.flwr.app.config], e.g. --set dropout-rate=0.1")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last finished round, "
                                                    "with the config it recorded (other flags must agree)")
    p.add_argument("--setting", choices=tuple(PRESETS), default=None,
                   help="a named setting to start from: shared (the defaults) or papers (one image, one step, "
                        "lenet, lr 0.1); the flags above override its keys")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also log the per-round numbers and the hook's reconstruction figures to TensorBoard in DIR "
                        "(pip install -e \".[tensorboard]\")")
    p.add_argument("--quiet", action="store_true", help="no legend and no progress lines, the table only")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of each process of the run (OMP_NUM_THREADS; default: the environment's "
                        "OMP_NUM_THREADS, else 1: each client is a one-CPU actor already, and the hook's attack "
                        "of one upload gains little from a second thread but slows any other job on the cores)")


def run_config_from_args(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The run config the flags give: the preset (``--setting``), then the flags, then ``--set``."""
    overrides: dict[str, Any] = dict(PRESETS[args.setting]) if getattr(args, "setting", None) else {}
    for flag, key in RUN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    sets = parse_sets(args.sets)
    if "resume" in sets:
        raise ConfigError("resume is not set with --set: use --resume DIR")
    overrides.update(sets)
    overrides.setdefault("attack-workers", default_attack_workers())
    overrides["out-dir"] = str(out.resolve())
    return overrides
