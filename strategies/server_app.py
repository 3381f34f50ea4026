"""Flower ``ServerApp`` entry point: validates the config, writes ``config.json``, and runs
the strategy stack of :func:`strategies.factory.build_strategy` in Flower's
``DefaultWorkflow`` (with ``SecAggPlusWorkflow`` for the fit rounds under
``secure-aggregation``; :mod:`strategies.secagg`)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from flwr.app import Context
from flwr.server import LegacyContext, ServerConfig
from flwr.serverapp import Grid, ServerApp

from fl_defense.config import ExperimentConfig, parse_run_config
from fl_defense.io import write_json
from strategies.factory import build_strategy


def resolve_out_dir(cfg: ExperimentConfig, run_id: int | None = None) -> Path:
    """The run's absolute output folder (``out-dir``, or ``~/fl-defense-runs/<stamp>``)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path.home() / "fl-defense-runs" / f"{stamp}-{run_id or 0}"


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from strategies.secagg import run_workflow

    cfg = parse_run_config(context.run_config)
    out_dir = resolve_out_dir(cfg, getattr(context, "run_id", None))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", cfg.to_run_config() | {"out-dir": str(out_dir)})
    strategy = build_strategy(cfg, out_dir)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.num_server_rounds),
                           strategy=strategy)
    run_workflow(cfg)(grid, legacy)
