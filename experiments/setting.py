"""The federation's setting: the config keys that decide what a client's update is.

A leakage number carries its setting.  The sweep measures leakage on updates built by the
client's own code path (:func:`fl_defense.task.defended_payload`) under a config, and
records that config's setting in every cell and in ``thresholds.csv``; ``train
--thresholds`` refuses thresholds measured in another setting, naming each key that
differs, because a defense strength only means something in the units of the updates it
was measured on (clipping's C and noising's sigma are absolute).

Keys
----
``UPDATE_KEYS`` must agree between the sweep and the training that uses its thresholds:
they decide the shape and the scale of an update (data set and image size, model,
learning rate, local steps, batch size, images per client per round).
``CONTEXT_KEYS`` (partition, number of clients, seed) and ``ATTACK_KEYS`` (the
attack's method and budget) are recorded with every number but not required to agree:
the partition and the seed choose *which* images a client holds, not what its update is
made of, and the training grid deliberately trains the same strengths on IID and
non-IID partitions.

Flags and presets
-----------------
The ``attack``, ``sweep`` and ``train`` commands take the same setting flags as a run
(:func:`add_setting_flags`), with the same defaults (``[tool.flwr.app.config]``), so by
default every command and the main job share one setting, the **shared** setting.
``--setting NAME`` starts from a named preset (:data:`PRESETS`) instead; flags given beside
it override its keys.  ``papers`` is the setting of DLG and iDLG: one image, one local
step, the DLG LeNet, lr 0.1.
"""

from __future__ import annotations

import argparse
import tomllib
from typing import Any, Iterable, Mapping

from fl_defense.config import ConfigError, ExperimentConfig, is_text_key
from fl_defense.models import MODELS

UPDATE_KEYS = ("dataset", "model", "lr", "local-steps", "batch-size", "images-per-client")
CONTEXT_KEYS = ("partition", "num-clients", "seed")
ATTACK_KEYS = ("attack-method", "attack-max-iter", "attack-restarts", "attack-patience", "attack-tv")
#: The attack experiments' iteration budget per try (``attack``, ``sweep``, the leak map): at
#: least the hook's (config key ``attack-max-iter``), whose default fits a first run.
EXPERIMENT_MAX_ITER = 2000
SETTING_KEYS = UPDATE_KEYS + CONTEXT_KEYS + ATTACK_KEYS

#: Named settings: config keys over the defaults.  ``shared`` is the defaults themselves.
PRESETS = {
    "shared": {},
    "papers": {"model": "lenet", "lr": 0.1, "batch-size": 1, "local-steps": 1, "images-per-client": 1},
}

# flag dest -> config key
SETTING_FLAGS = {"dataset": "dataset", "data_dir": "data-dir", "model": "model", "lr": "lr",
                 "local_steps": "local-steps", "batch_size": "batch-size",
                 "images_per_client": "images-per-client", "partition": "partition",
                 "clients": "num-clients", "seed": "seed"}


def add_setting_flags(p: argparse.ArgumentParser) -> None:
    """The federation's setting, as ``run`` takes it (defaults: ``[tool.flwr.app.config]``)."""
    d = ExperimentConfig()
    g = p.add_argument_group("the federation's setting (defaults as in a run)")
    g.add_argument("--setting", choices=tuple(PRESETS), default="shared",
                   help="a named setting to start from: shared (the run's defaults) or papers (one image, one "
                        "step, lenet, lr 0.1); the flags below override its keys")
    g.add_argument("--dataset", help=f"data set (default {d.dataset})")
    g.add_argument("--data-dir", dest="data_dir", help="folder of the torchvision data sets")
    g.add_argument("--model", help=f"{MODELS.choices_text()} (default {d.model})")
    g.add_argument("--lr", type=float, help=f"the clients' learning rate (default {d.lr})")
    g.add_argument("--local-steps", dest="local_steps", type=int, help=f"default {d.local_steps}")
    g.add_argument("--batch-size", dest="batch_size", type=int, help=f"default {d.batch_size}")
    g.add_argument("--images-per-client", dest="images_per_client", type=int,
                   help=f"images a client trains on per round (default {d.images_per_client})")
    g.add_argument("--partition", help=f"iid | dirichlet:ALPHA | pathological:K (default {d.partition})")
    g.add_argument("--clients", type=int, help=f"number of clients (default {d.num_clients})")
    g.add_argument("--seed", type=int, help=f"default {d.seed}")
    g.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any other key of [tool.flwr.app.config]")


def _parse_set_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value, read as TOML (``3``, ``0.5``, ``true``, ``"x"``) or
    else as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """The config keys of repeated ``--set KEY=VALUE`` flags, later ones winning.

    A text key keeps its text as typed when it does not read as a TOML string
    (``--set fail-clients=3`` and ``--set fail-clients='"3"'`` are both the text ``"3"``).

    Raises
    ------
    ConfigError
        An item without ``=`` or with an empty key, named as typed.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"--set wants KEY=VALUE, got {item!r}")
        value = _parse_set_value(text)
        out[key] = text if is_text_key(key) and not isinstance(value, str) else value
    return out


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys the preset (``--setting``), the setting flags and ``--set`` give, in
    that order of precedence (later wins)."""
    out: dict[str, Any] = dict(PRESETS[getattr(args, "setting", None) or "shared"])
    for flag, key in SETTING_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    return out | parse_sets(getattr(args, "sets", []))


def setting_of(cfg: ExperimentConfig) -> dict[str, Any]:
    """The recorded setting of ``cfg``: every key of :data:`SETTING_KEYS` with its value."""
    flat = cfg.to_run_config()
    return {key: flat[key] for key in SETTING_KEYS}


def defense_as_applied(name: str, model: str) -> str:
    """The defense a model trains with: on a model with BatchNorm, a defense's registered
    ``batchnorm_variant`` (``masking`` -> the BatchNorm-aware ``masking-bn``: the naive variant
    corrupts the running statistics).  The sweep and the training grid both apply it, so
    that they measure the same defense."""
    from fl_defense.defenses import get_defense
    from fl_defense.models import has_batchnorm

    variant = get_defense(name).batchnorm_variant
    return variant if variant and has_batchnorm(model) else name


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def setting_mismatches(recorded: Mapping[str, Any], cfg: ExperimentConfig,
                       keys: tuple[str, ...] = UPDATE_KEYS) -> list[str]:
    """``"key: X there, Y here"`` for every key of ``keys`` on which ``recorded`` (a setting
    read back from a file, values possibly as text) and ``cfg`` differ; a key the record
    lacks counts as differing."""
    here = setting_of(cfg)
    out = []
    for key in keys:
        if key not in recorded or recorded[key] in (None, ""):
            out.append(f"{key}: not recorded there, {here[key]!r} here")
        elif not _same(recorded[key], here[key]):
            out.append(f"{key}: {recorded[key]!r} there, {here[key]!r} here")
    return out


def attack_setting(args: argparse.Namespace, **keys: Any) -> ExperimentConfig:
    """The validated setting of an attack experiment (``attack``, ``sweep``): the preset and
    the setting flags, the attack flags every such command takes (``--method``,
    ``--leak-threshold``, ``--max-iter``, ``--restarts``, ``--tv``, ``--decoy-pool-size``;
    a flag left out keeps its config key's default, but the budget per try is
    :data:`EXPERIMENT_MAX_ITER` unless given), then ``keys`` by config key.  Its
    clients must train on ``images-per-client`` >= 1 images."""
    from fl_defense.config import parse_run_config

    overrides = {"attack-max-iter": EXPERIMENT_MAX_ITER, **setting_overrides(args)}
    flags = {"method": "attack-method", "leak_threshold": "leak-threshold", "max_iter": "attack-max-iter",
             "restarts": "attack-restarts", "tv": "attack-tv", "decoy_pool_size": "decoy-pool-size"}
    for flag, key in flags.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    cfg = parse_run_config({**overrides, **keys})
    if cfg.images_per_client < 1:
        raise ConfigError("the attack's clients train on images-per-client images each round; give "
                          "--images-per-client N (>= 1)")
    return cfg
