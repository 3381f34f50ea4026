"""Flower ``ServerApp`` entry point: validates the config and the inputs it names (the data
set's files, the partitions), writes ``config.json``, and runs the strategy stack of
:func:`strategies.factory.build_strategy` in Flower's ``DefaultWorkflow`` (with
``SecAggPlusWorkflow`` for the fit rounds under ``secure-aggregation``;
:mod:`strategies.secagg`) -- from round 1, or, with ``resume = true``, from the checkpoint
in ``out-dir`` (:mod:`strategies.checkpoint`).  In a simulation the grid it is given
pulls replies at :func:`fl_defense.flower_engine.poll_interval`
(:func:`~fl_defense.flower_engine.shorten_grid_polling`)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from flwr.app import Context
from flwr.server import LegacyContext, ServerConfig
from flwr.serverapp import Grid, ServerApp

from fl_defense.config import ExperimentConfig, parse_run_config
from fl_defense.quiet import quiet_third_party
from fl_defense.flower_engine import shorten_grid_polling
from fl_defense.io import write_json
from fl_defense.task import check_run_inputs, get_weights, new_model
from strategies.checkpoint import CHECKPOINT, checkpoint_for, recorded_config
from strategies.factory import build_strategy

#: What a fresh run (``resume = false``) removes from its folder first: a previous run's.
STALE_OUTPUTS = (CHECKPOINT, "metrics.jsonl", "summary.json")


def resolve_out_dir(cfg: ExperimentConfig, run_id: int | None = None) -> Path:
    """The run's absolute output folder (``out-dir``, or ``~/fl-defense-runs/<stamp>``)."""
    if cfg.out_dir:
        return Path(cfg.out_dir)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path.home() / "fl-defense-runs" / f"{stamp}-{run_id or 0}"


quiet_third_party()  # before Flower's simulation starts Ray in this process
app = ServerApp()


def checked_config(run_config) -> ExperimentConfig:
    """The validated config of a run, or, for a bad one, one clear error line in Flower's log
    and ``SystemExit(2)`` (no traceback: Flower logs the traceback of an exception it catches,
    but not of ``SystemExit``, which ends the ServerApp's process with status 2)."""
    from logging import ERROR

    from flwr.supercore import log

    from fl_defense.errors import ConfigError

    try:
        cfg = parse_run_config(run_config)
        check_run_inputs(cfg)  # a bad image file or an impossible partition stops here, named
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        log(ERROR, "fl-defense: the run config is invalid: %s", exc)
        raise SystemExit(2) from None
    return cfg


@app.main()
def main(grid: Grid, context: Context) -> None:
    from strategies.secagg import run_workflow

    cfg = checked_config(context.run_config)
    shorten_grid_polling(grid)  # a simulation's grid pulls replies at FL_DEFENSE_FLOWER_POLL's interval
    out_dir = resolve_out_dir(cfg, getattr(context, "run_id", None))
    checkpoint = None
    if cfg.resume:
        checkpoint = checkpoint_for(out_dir, cfg, [w.shape for w in get_weights(new_model(cfg))])
    else:
        for stale in STALE_OUTPUTS:
            (out_dir / stale).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", recorded_config(cfg) | {"out-dir": str(out_dir)})
    strategy = build_strategy(cfg, out_dir, checkpoint)
    done = checkpoint.round if checkpoint else 0
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.num_server_rounds - done),
                           strategy=strategy)
    run_workflow(cfg)(grid, legacy)
