"""Flower ``ServerApp`` entry point: validates the config, writes ``config.json``, and
builds the strategy stack (``Recorder(Dropout(Hook(Validating(base))))``)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from flwr.app import Context
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import ServerApp

from fl_defense.config import ExperimentConfig, parse_run_config
from fl_defense.io import write_json
from fl_defense.task import evaluate_model, get_weights, load_data, new_model, select_device, set_weights
from strategies.factory import base_strategy
from strategies.recorder import RecordingStrategy
from strategies.robust import DropoutStrategy, ValidatingStrategy


def resolve_out_dir(cfg: ExperimentConfig, run_id: int | None = None) -> Path:
    """The run's absolute output folder (``out-dir``, or ``~/fl-defense-runs/<stamp>``)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path.home() / "fl-defense-runs" / f"{stamp}-{run_id or 0}"


def build_strategy(cfg: ExperimentConfig, out_dir: Path):
    """The full strategy stack of a run."""
    train, test = load_data(cfg)
    model = new_model(cfg, train)
    device = select_device()
    weights = get_weights(model)

    def evaluate_fn(server_round, parameters, config):
        set_weights(model, parameters)
        loss, acc = evaluate_model(model, test.images, test.labels, device)
        return loss, {"accuracy": acc}

    strategy = base_strategy(cfg, weights, evaluate_fn)
    validating = ValidatingStrategy(strategy, [w.shape for w in weights])
    strategy = validating
    hook = None
    if cfg.attack_every > 0:
        from attacks.hook import AttackHook

        hook = strategy = AttackHook(strategy, cfg, out_dir)
    dropout = strategy = DropoutStrategy(strategy)

    def extra():
        row = {"clients_rejected": validating.last_rejected, "clients_dropped": dropout.last_dropped}
        if hook is not None:
            row.update(hook.last_metrics)
        return row

    return RecordingStrategy(strategy, out_dir, cfg.num_server_rounds, extra=extra)


def server_fn(context: Context) -> ServerAppComponents:
    cfg = parse_run_config(context.run_config)
    out_dir = resolve_out_dir(cfg, getattr(context, "run_id", None))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", cfg.to_run_config() | {"out-dir": str(out_dir)})
    strategy = build_strategy(cfg, out_dir)
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=cfg.num_server_rounds))


app = ServerApp(server_fn=server_fn)
