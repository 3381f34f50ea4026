"""Resume a killed run: a checkpoint after every round, and the round offset that continues it.

What a run needs to go on after round ``k`` is: the global weights after round ``k``, the
round ``k`` itself, and the state of the strategy stack.  The stack's layers are
stateless from one round to the next (every random choice is seeded by seed, client
and round; the hook keeps only the weights of the round it is in) except the recorder,
whose state is its rows.  A layer that keeps state across rounds says so by defining
``state_dict() -> dict`` (JSON-able) and ``load_state_dict(dict)``; :func:`stack_state`
collects them all, keyed by depth and class name, so a stack that differs from the one
that wrote the checkpoint is refused on resume.

:class:`ResumableStrategy`, the outermost wrapper, writes ``checkpoint.npz`` (one file,
atomically: :func:`fl_defense.io.atomic_write_bytes`) after every round's central
evaluation, for the last round whose row the recorder has written (the round itself,
unless its row waits for an attack in a worker process: then the checkpoint stays at the
last written row, with that round's weights, and the rounds after it run again on
resume).  The file holds the weights
(``w000``, ``w001``, ... in ``state_dict`` order, dtypes kept) and ``meta``, a JSON
text: ``format``, ``round``, ``num_rounds``, ``config`` (the run config, run-control keys
at their defaults) and ``state``.

Flower's server numbers rounds from 1 in every run, and every seed stream of a round
uses the round number, so a run resumed after round ``k`` runs ``num_rounds - k`` Flower
rounds from the checkpoint's weights, and :class:`ResumableStrategy` maps Flower's round
``r`` to ``k + r`` for the whole stack.  The resumed ``metrics.jsonl`` then equals the
uninterrupted run's, wall-clock fields aside.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.common import parameters_to_ndarrays
from flwr.server.strategy import Strategy

from fl_defense.config import RUN_CONTROL_KEYS, ExperimentConfig, default_run_config
from fl_defense.errors import ConfigError
from fl_defense.io import atomic_write_bytes
from strategies.wrapper import StrategyWrapper, stack_layers

CHECKPOINT = "checkpoint.npz"
FORMAT = 1
#: Config keys a resumed run may differ in: where the run lives, and how it is executed.
UNCOMPARED_KEYS = ("out-dir", *RUN_CONTROL_KEYS)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """What a run needs to continue after round :attr:`round` (see the module docstring)."""

    round: int
    num_rounds: int
    weights: list[np.ndarray]
    config: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)


def recorded_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config a run records (``config.json``, the checkpoint): run-control keys at
    their defaults, so that a resumed run records the same config as the run it continues."""
    defaults = default_run_config()
    return {**cfg.to_run_config(), **{k: defaults[k] for k in RUN_CONTROL_KEYS}}


def config_differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The keys (outside :data:`UNCOMPARED_KEYS`) whose values differ, each as
    ``key (recorded X, given Y)``."""
    out = []
    for key in sorted(set(recorded) | set(given)):
        if key in UNCOMPARED_KEYS:
            continue
        if recorded.get(key) != given.get(key):
            out.append(f"{key} (recorded {recorded.get(key)!r}, given {given.get(key)!r})")
    return out


# ------------------------------------------------------------------ the stack's state
def stack_state(strategy: Strategy) -> dict[str, Any]:
    """``{"<depth>:<class>": layer.state_dict()}`` of every layer that keeps state."""
    return {f"{depth}:{type(layer).__name__}": layer.state_dict()
            for depth, layer in enumerate(stack_layers(strategy)) if hasattr(layer, "state_dict")}


def restore_stack_state(strategy: Strategy, state: Mapping[str, Any], source: Path) -> None:
    """Load ``state`` (from :func:`stack_state`) into the same stack; refuse another stack."""
    layers = {f"{depth}:{type(layer).__name__}": layer
              for depth, layer in enumerate(stack_layers(strategy)) if hasattr(layer, "state_dict")}
    if set(layers) != set(state):
        raise ConfigError(f"checkpoint {source} was written by another strategy stack "
                          f"(its stateful layers: {sorted(state)}; this run's: {sorted(layers)})")
    for key, layer in layers.items():
        layer.load_state_dict(state[key])


# ------------------------------------------------------------------ the file
def save_checkpoint(out_dir: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``out_dir/checkpoint.npz`` atomically."""
    meta = {"format": FORMAT, "round": ckpt.round, "num_rounds": ckpt.num_rounds,
            "config": ckpt.config, "state": ckpt.state}
    arrays = {f"w{i:03d}": np.asarray(w) for i, w in enumerate(ckpt.weights)}
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    return atomic_write_bytes(Path(out_dir) / CHECKPOINT, buf.getvalue())


def load_checkpoint(out_dir: str | Path) -> Checkpoint | None:
    """The checkpoint in ``out_dir`` (``None`` when there is none).

    Raises
    ------
    ConfigError : the file is not a checkpoint this code wrote (truncated, corrupt, other
        format); the message names it.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            names = sorted((k for k in data.files if k.startswith("w")), key=lambda k: int(k[1:]))
            weights = [data[k] for k in names]
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT}")
        ckpt = Checkpoint(int(meta["round"]), int(meta["num_rounds"]), weights, dict(meta["config"]),
                          dict(meta["state"]))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ConfigError(f"checkpoint {path} is unreadable ({exc}); delete it to start the run "
                          f"from round 1") from None
    if not 1 <= ckpt.round <= ckpt.num_rounds:
        raise ConfigError(f"checkpoint {path} is unreadable (round {ckpt.round} of {ckpt.num_rounds})")
    return ckpt


def checkpoint_rows(ckpt: Checkpoint) -> list[dict[str, Any]]:
    """The recorder's rows in a checkpoint (the rounds it has done)."""
    for key, state in ckpt.state.items():
        if key.endswith(":RecordingStrategy"):
            return [dict(r) for r in state["rows"]]
    return []


def checkpoint_for(out_dir: str | Path, cfg: ExperimentConfig, shapes) -> Checkpoint | None:
    """The checkpoint a run of ``cfg`` resumes from, checked against it: same config
    (outside :data:`UNCOMPARED_KEYS`), same number of rounds, same weight shapes."""
    ckpt = load_checkpoint(out_dir)
    if ckpt is None:
        return None
    path = Path(out_dir) / CHECKPOINT
    differ = config_differences(ckpt.config, recorded_config(cfg))
    if differ:
        raise ConfigError(f"checkpoint {path} belongs to another config: {'; '.join(differ)}")
    got = [tuple(w.shape) for w in ckpt.weights]
    if got != [tuple(s) for s in shapes]:
        raise ConfigError(f"checkpoint {path} holds weights of shapes {got}, not the model's")
    return ckpt


# ------------------------------------------------------------------ the wrapper
class ResumableStrategy(StrategyWrapper):
    """The outermost wrapper: Flower's round ``r`` is round ``start + r`` for the whole
    stack, and after each round's central evaluation the checkpoint is written; then the
    layers with a ``finish()`` (the recorder's ``summary.json``) are called, so that the run's
    last file follows its last checkpoint."""

    def __init__(self, inner: Strategy, cfg: ExperimentConfig, out_dir: str | Path, start: int = 0) -> None:
        super().__init__(inner)
        self.out_dir = Path(out_dir)
        self.config = recorded_config(cfg)
        self.num_rounds = cfg.num_server_rounds
        self.start = int(start)
        self._finishers = [layer for layer in stack_layers(inner) if hasattr(layer, "finish_deferred")]
        for layer in self._finishers:
            layer.finish_deferred = True
        self._recorders = [layer for layer in stack_layers(inner) if hasattr(layer, "recorded_round")]
        #: weights of the rounds evaluated but not yet recorded (late figures), by round
        self._weights: dict[int, list[np.ndarray]] = {}

    def __repr__(self) -> str:
        return f"ResumableStrategy(start={self.start}, {self.inner!r})"

    def configure_fit(self, server_round, parameters, client_manager):
        return self.inner.configure_fit(self.start + server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        return self.inner.aggregate_fit(self.start + server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(self.start + server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        return self.inner.aggregate_evaluate(self.start + server_round, results, failures)

    def evaluate(self, server_round, parameters):
        if server_round == 0:  # Flower's evaluation of the initial weights
            return None if self.start else self.inner.evaluate(0, parameters)
        current = self.start + server_round
        result = self.inner.evaluate(current, parameters)
        self._weights[current] = parameters_to_ndarrays(parameters)
        # the checkpoint of the last round whose row is written (rows wait for late figures)
        done = min((layer.recorded_round for layer in self._recorders), default=current)
        if done in self._weights:
            save_checkpoint(self.out_dir, Checkpoint(done, self.num_rounds, self._weights[done], self.config,
                                                     stack_state(self.inner)))
        self._weights = {r: w for r, w in self._weights.items() if r > done}
        for layer in self._finishers:
            layer.finish()
        return result
