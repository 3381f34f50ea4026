"""What the attack commands share: their flags, the experiment config they build, and
small parsers."""

from __future__ import annotations

import argparse
import dataclasses

from fl_defense.config import ATTACK_METHODS, ATTACKERS, ConfigError, ExperimentConfig, parse_run_config

# attack flag -> config key: the attack, sweep and train commands describe the federation
# and the attacker with the same keys as a run
ATTACK_FLAGS = {"attacker": "attacker", "method": "attack-method", "lr": "lr", "max_iter": "attack-max-iter",
                "restarts": "attack-restarts", "leak_threshold": "leak-threshold", "seed": "seed",
                "data_dir": "data-dir"}


def fmt_strength(v: float) -> str:
    return f"{v:g}"


def parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} is empty, got {text!r}")
    return items


PAPERS_LR = 0.1  # DLG / iDLG's client learning rate


def add_attack_flags(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    p.add_argument("--attacker", default=d.attacker, choices=ATTACKERS,
                   help="naive: the papers' L2 matching; aware: picks the objective that fits the defense")
    p.add_argument("--method", default=d.attack_method, choices=ATTACK_METHODS)
    # the attack command's clients default to the papers' setting (one step of one image, DLG LeNet, lr 0.1)
    p.add_argument("--lr", type=float, default=PAPERS_LR,
                   help=f"the client's learning rate (its update is -lr*g; default {PAPERS_LR}, the papers')")
    p.add_argument("--max-iter", dest="max_iter", type=int, default=d.attack_max_iter)
    p.add_argument("--restarts", type=int, default=d.attack_restarts)
    p.add_argument("--leak-threshold", dest="leak_threshold", type=float, default=d.leak_threshold)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--chunk", type=int, default=64, help="targets attacked together (vectorised)")
    p.add_argument("--data-dir", dest="data_dir", default=d.data_dir)


def attack_experiment_config(args: argparse.Namespace, **overrides) -> ExperimentConfig:
    """The validated :class:`ExperimentConfig` an attack command describes (flags named by
    :data:`ATTACK_FLAGS`, then ``overrides`` by config key); ``--chunk`` is checked too."""
    if args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk!r}")
    values = {key: getattr(args, flag) for flag, key in ATTACK_FLAGS.items()}
    return parse_run_config({**values, **overrides})


def with_attack(cfg: ExperimentConfig, **changes) -> ExperimentConfig:
    """``cfg`` with some fields changed (already-typed values)."""
    return dataclasses.replace(cfg, **changes)
