"""The typed experiment configuration, parsed and validated once, at the boundary.

Every knob of an experiment lives in :class:`ExperimentConfig`; its field defaults are
the single source of the defaults that ``pyproject.toml``'s ``[tool.flwr.app.config]``
repeats (a test checks that the two agree).  :func:`parse_run_config` turns the flat
``key = value`` mapping that Flower hands over in ``context.run_config`` (kebab-case keys)
into a validated :class:`ExperimentConfig`, or raises :class:`ConfigError` naming the key
and the value -- and, for an unknown key or name, the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from fl_defense.datasets import DATASETS, FOLDER_PREFIX, folder_of
from fl_defense.defenses import DefenseSpec, parse_defense
from fl_defense.errors import ConfigError, suggest
from fl_defense.models import MODELS, has_batchnorm
from fl_defense.partition import PartitionSpec
from fl_defense.privacy import NEIGHBOURING
from fl_defense.strategy_catalogue import STRATEGIES

__all__ = ["ConfigError", "ExperimentConfig", "parse_run_config", "default_run_config",
           "RUN_CONTROL_KEYS", "AGGREGATIONS", "ATTACKERS", "ATTACK_METHODS", "BYZANTINE_MODES",
           "DP_STRATEGIES"]

AGGREGATIONS = ("mean", "median")
ATTACKERS = ("naive", "aware")
ATTACK_METHODS = ("idlg", "dlg")
BYZANTINE_MODES = ("sign-flip", "scaled", "random")
DP_STRATEGIES = ("none", "client-side-fixed-clipping", "server-side-fixed-clipping")

# config values held as typed specs: the text a user writes -> its parser
_SPECS = {"defense": parse_defense, "partition": PartitionSpec.parse}


@dataclass(frozen=True)
class ExperimentConfig:
    """Every knob of one federated experiment (kebab-case in TOML, snake_case here)."""

    num_server_rounds: int = 10
    num_clients: int = 10
    fraction_fit: float = 1.0
    fraction_evaluate: float = 0.0
    dataset: str = "mnist-embedded"
    data_dir: str = ""
    partition: PartitionSpec = PartitionSpec()
    model: str = "tanhcnn"
    local_steps: int = 1
    batch_size: int = 4
    images_per_client: int = 4
    lr: float = 0.3
    defense: DefenseSpec = DefenseSpec("none")
    strategy: str = "fl-defense"
    aggregation: str = "mean"
    trim_beta: float = 0.2
    krum_malicious: int = 2
    seed: int = 0
    out_dir: str = ""
    dropout_rate: float = 0.0
    byzantine_clients: int = 0
    byzantine_mode: str = "sign-flip"
    byzantine_scale: float = 10.0
    fail_clients: str = ""
    slow_clients: str = ""
    slow_seconds: float = 0.0
    attack_every: int = 1
    attack_clients: int = 1
    attacker: str = "naive"
    attack_method: str = "idlg"
    attack_max_iter: int = 300
    attack_restarts: int = 1
    attack_patience: int = 100
    attack_tv: float = 1e-3
    leak_threshold: float = 0.4
    decoys: str = ""
    decoy_pool_size: int = 1000
    attack_workers: int = 0
    resume: bool = False
    # formal privacy (fl_defense.privacy, strategies.central_dp, strategies.secagg)
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    dp_neighbouring: str = "add-or-remove-one"
    dp_strategy: str = "none"
    dp_noise_multiplier: float = 1.0
    secure_aggregation: bool = False
    secagg_num_shares: int = 3
    secagg_reconstruction_threshold: int = 2
    secagg_clipping_range: float = 0.0

    # ------------------------------------------------------------------ derived
    @property
    def failing_clients(self) -> tuple[int, ...]:
        """Partition ids that raise in ``fit`` (fault injection), from ``fail-clients``."""
        return _client_ids(self.fail_clients)

    @property
    def slow_client_ids(self) -> tuple[int, ...]:
        """Partition ids that sleep ``slow-seconds`` in ``fit`` before training (stragglers)."""
        return _client_ids(self.slow_clients)

    def to_run_config(self) -> dict[str, Any]:
        """The flat kebab-case mapping, as in ``[tool.flwr.app.config]``."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name.replace("_", "-")] = str(value) if f.name in _SPECS else value
        return out


def _client_ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


#: Keys that steer how a run is executed, not what it computes: a resumed run may differ
#: from the recorded config in these (``resume``; ``attack-workers``, where the hook's
#: attacks run) and ``config.json`` records them as their defaults.
RUN_CONTROL_KEYS = ("resume", "attack-workers")


def default_run_config() -> dict[str, Any]:
    """The defaults of every key, kebab-case (what pyproject.toml must repeat)."""
    return ExperimentConfig().to_run_config()


_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(ExperimentConfig)}
_TYPES = {f.name.replace("_", "-"): type(getattr(ExperimentConfig(), f.name)) for f in dataclasses.fields(ExperimentConfig)}


def is_text_key(key: str) -> bool:
    """Whether config key ``key`` holds text (so that ``--set fail-clients=3`` means "3")."""
    return _TYPES.get(key) is str or key in _SPECS


def _coerce(key: str, value: Any) -> Any:
    want = _TYPES[key]
    if key in _SPECS:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        if key == "defense":
            return value  # parsed in parse_run_config, once dp-clip is known
        try:
            return _SPECS[key](value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if want is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if want is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _check(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {rule}, got {value!r}")


def _choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {key} {value!r}; choose one of {', '.join(choices)}{suggest(value, choices)}")


def parse_run_config(run_config: Mapping[str, Any], *, require_out_dir: bool = False) -> ExperimentConfig:
    """Validate a flat run-config mapping into an :class:`ExperimentConfig`.

    Missing keys take their defaults; unknown keys, wrong types, out-of-range values and
    unknown names raise :class:`ConfigError`.  With ``require_out_dir`` the output folder
    must be given.
    """
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, _FIELDS)}")
        values[_FIELDS[key].name] = _coerce(key, value)
    dp_clip = values.get("dp_clip", ExperimentConfig.dp_clip)
    _check(dp_clip > 0, "dp-clip", dp_clip, "> 0 (the L2 bound C of the update)")
    defense = values.get("defense", ExperimentConfig.defense)
    try:  # binds dp-clip into the spec of a defense that needs C (dp-gaussian)
        values["defense"] = parse_defense(defense if isinstance(defense, str) else str(defense), clip=dp_clip)
    except ValueError as exc:
        raise ConfigError(f"defense: {exc}") from None
    cfg = ExperimentConfig(**values)

    _check(cfg.num_server_rounds >= 1, "num-server-rounds", cfg.num_server_rounds, ">= 1")
    _check(cfg.num_clients >= 1, "num-clients", cfg.num_clients, ">= 1")
    _check(0 < cfg.fraction_fit <= 1, "fraction-fit", cfg.fraction_fit, "in (0, 1]")
    _check(0 <= cfg.fraction_evaluate <= 1, "fraction-evaluate", cfg.fraction_evaluate, "in [0, 1]")
    if cfg.dataset.startswith(FOLDER_PREFIX):
        folder = folder_of(cfg.dataset)
        _check(bool(folder) and Path(folder).is_absolute(), "dataset", cfg.dataset,
               f"{FOLDER_PREFIX}<absolute folder> (the app runs from a copy of the project)")
    else:
        _choice("dataset", cfg.dataset, (*DATASETS.names(), f"{FOLDER_PREFIX}/ABS/DIR"))
    _choice("model", cfg.model, MODELS.names())
    _check(cfg.local_steps >= 1, "local-steps", cfg.local_steps, ">= 1")
    _check(cfg.batch_size >= 1, "batch-size", cfg.batch_size, ">= 1")
    _check(cfg.images_per_client >= 0, "images-per-client", cfg.images_per_client,
           ">= 0 (0: each round uses the whole partition)")
    _check(cfg.lr > 0, "lr", cfg.lr, "> 0")
    spec = cfg.partition
    if spec.scheme == "pathological" and spec.param > 10_000:
        raise ConfigError(f"partition: pathological K is too large, got {cfg.partition!r}")
    _choice("strategy", cfg.strategy, STRATEGIES.names())
    _choice("aggregation", cfg.aggregation, AGGREGATIONS)
    _check(0 <= cfg.trim_beta < 0.5, "trim-beta", cfg.trim_beta, "in [0, 0.5)")
    _check(cfg.krum_malicious >= 0, "krum-malicious", cfg.krum_malicious, ">= 0")
    _check(cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    if cfg.out_dir:
        _check(Path(cfg.out_dir).is_absolute(), "out-dir", cfg.out_dir,
               "an absolute path (the app runs from a copy of the project)")
    elif require_out_dir:
        raise ConfigError("out-dir must be given, got ''")
    _check(0 <= cfg.dropout_rate < 1, "dropout-rate", cfg.dropout_rate, "in [0, 1)")
    _check(0 <= cfg.byzantine_clients <= cfg.num_clients, "byzantine-clients", cfg.byzantine_clients,
           f"in [0, num-clients={cfg.num_clients}]")
    _choice("byzantine-mode", cfg.byzantine_mode, BYZANTINE_MODES)
    _check(cfg.byzantine_scale > 0, "byzantine-scale", cfg.byzantine_scale, "> 0")
    try:
        failing = cfg.failing_clients
    except ValueError:
        raise ConfigError(f"fail-clients must be comma-separated client ids, got {cfg.fail_clients!r}") from None
    for cid in failing:
        _check(0 <= cid < cfg.num_clients, "fail-clients", cfg.fail_clients,
               f"client ids in [0, {cfg.num_clients})")
    try:
        slow = cfg.slow_client_ids
    except ValueError:
        raise ConfigError(f"slow-clients must be comma-separated client ids, got {cfg.slow_clients!r}") from None
    for cid in slow:
        _check(0 <= cid < cfg.num_clients, "slow-clients", cfg.slow_clients,
               f"client ids in [0, {cfg.num_clients})")
    _check(0 <= cfg.slow_seconds <= 86400, "slow-seconds", cfg.slow_seconds, "in [0, 86400]")
    _check(cfg.attack_every >= 0, "attack-every", cfg.attack_every, ">= 0 (0 turns the attack off)")
    _check(1 <= cfg.attack_clients <= cfg.num_clients, "attack-clients", cfg.attack_clients,
           f"in [1, num-clients={cfg.num_clients}]")
    _choice("attacker", cfg.attacker, ATTACKERS)
    _choice("attack-method", cfg.attack_method, ATTACK_METHODS)
    _check(cfg.attack_max_iter >= 1, "attack-max-iter", cfg.attack_max_iter, ">= 1")
    _check(cfg.attack_restarts >= 0, "attack-restarts", cfg.attack_restarts, ">= 0")
    _check(cfg.attack_patience >= 1, "attack-patience", cfg.attack_patience, ">= 1")
    _check(cfg.attack_tv >= 0, "attack-tv", cfg.attack_tv, ">= 0 (0: no total-variation prior)")
    _check(0 < cfg.leak_threshold <= 1, "leak-threshold", cfg.leak_threshold, "in (0, 1]")
    _check(cfg.decoys in ("", "none") or Path(cfg.decoys).is_absolute(), "decoys", cfg.decoys,
           "'' (the data set's test split), 'none' (no identification criterion) or an absolute folder")
    _check(cfg.decoy_pool_size >= 1, "decoy-pool-size", cfg.decoy_pool_size, ">= 1")
    _check(0 <= cfg.attack_workers <= 64, "attack-workers", cfg.attack_workers,
           "in [0, 64] (0: the ServerApp attacks each round before the next begins)")
    _check_formal_privacy(cfg)
    return cfg


def _check_formal_privacy(cfg: ExperimentConfig) -> None:
    """The keys of the DP mechanism, Flower's DP wrappers and SecAgg+, and how they combine."""
    _check(0 < cfg.dp_delta < 1, "dp-delta", cfg.dp_delta, "in (0, 1)")
    _choice("dp-neighbouring", cfg.dp_neighbouring, NEIGHBOURING)
    _choice("dp-strategy", cfg.dp_strategy, DP_STRATEGIES)
    _check(cfg.dp_noise_multiplier >= 0, "dp-noise-multiplier", cfg.dp_noise_multiplier, ">= 0")
    batchnorm = has_batchnorm(cfg.model)
    if cfg.defense.name == "dp-gaussian" and batchnorm:
        raise ConfigError(f"defense {str(cfg.defense)!r} with model {cfg.model!r}: BatchNorm running statistics "
                          "are values computed from the private batches that no clipping bounds, so the "
                          "Gaussian mechanism cannot cover them; use model lenet")
    if cfg.dp_strategy != "none" and batchnorm:
        raise ConfigError(f"dp-strategy {cfg.dp_strategy!r} with model {cfg.model!r}: Flower's fixed clipping "
                          "takes one norm over every array, BatchNorm's running statistics and its step counter "
                          "(which grows by local-steps) included, and leaves the counter unclipped; use model lenet")
    _check(cfg.secagg_num_shares >= 3, "secagg-num-shares", cfg.secagg_num_shares, ">= 3")
    _check(2 <= cfg.secagg_reconstruction_threshold < cfg.secagg_num_shares, "secagg-reconstruction-threshold",
           cfg.secagg_reconstruction_threshold, f"in [2, secagg-num-shares={cfg.secagg_num_shares})")
    _check(cfg.secagg_clipping_range >= 0, "secagg-clipping-range", cfg.secagg_clipping_range,
           ">= 0 (0: set from the update's scale)")
    if not cfg.secure_aggregation:
        return
    why = "SecAgg+ hands the strategy only the sum of the uploads (every FitRes carries the same aggregate)"
    needs = STRATEGIES.get(cfg.strategy).individual_uploads
    if needs:
        raise ConfigError(f"secure-aggregation with strategy {cfg.strategy!r}: {why}, but "
                          f"{needs}; use strategy fl-defense (mean) or FedAvg")
    if cfg.strategy == "fl-defense" and cfg.aggregation != "mean":
        raise ConfigError(f"secure-aggregation with aggregation {cfg.aggregation!r}: {why}, so the median would "
                          "silently become the mean; use aggregation mean")
    if cfg.dp_strategy == "server-side-fixed-clipping":
        raise ConfigError(f"secure-aggregation with dp-strategy {cfg.dp_strategy!r}: {why}, but server-side "
                          "clipping clips each upload; use dp-strategy client-side-fixed-clipping")
    if cfg.attack_every > 0 and (cfg.local_steps > 1 or batchnorm):
        raise ConfigError(f"secure-aggregation with attack-every={cfg.attack_every}, local-steps={cfg.local_steps} "
                          f"and model {cfg.model!r}: {why}; the attack hook attacks the aggregate as one step of "
                          "one batch of all the round's images, which it is only for local-steps = 1 and a model "
                          "without BatchNorm (use local-steps 1 and model lenet)")
    sampled = max(int(cfg.num_clients * cfg.fraction_fit), 1)
    _check(sampled >= 2, "num-clients", cfg.num_clients,
           f"such that at least 2 clients are sampled per round for secure-aggregation (now {sampled})")
