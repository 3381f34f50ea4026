"""``run_sim.py``: one federated experiment (``run``, the default command) and the
experiment commands, with a parser that guides (a misspelled flag gets "did you mean", an
error names the flag as typed and the config key behind it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from experiments.run_flags import add_run_flags, default_out_dir, run_config_from_args
from fl_defense.config import ConfigError, parse_run_config

# (row key, column title, format, what the column means)
COLUMNS = [("round", "round", "{:>5}", "the server round"),
           ("accuracy", "acc", "{:>7.4f}", "test accuracy of the global model after the round"),
           ("loss", "loss", "{:>8.4f}", "its test loss (cross-entropy)"),
           ("train_loss", "train", "{:>8.4f}", "the clients' mean training loss in the round"),
           ("clients_ok", "ok", "{:>3}", "clients whose update arrived"),
           ("clients_failed", "fail", "{:>4}", "clients that failed in the round"),
           ("attack_ssim_adjusted_mean", "ssim*", "{:>6.3f}",
            "the hook's reconstructions: mean brightness-adjusted SSIM to the private images (1 = identical)"),
           ("attack_leaked", "leak", "{:>5}",
            "private images the reconstructions identify among public look-alikes, of those attacked"),
           ("attack_leaked_paper", "paper", "{:>5}", "the same by the paper's criterion (adjusted SSIM >= 0.4)"),
           ("seconds", "sec", "{:>6.1f}", "wall time of the round (its attack too with --attack-workers 0)"),
           ("attack_seconds", "atk s", "{:>6.1f}", "seconds of the round's attack (in a worker process, beside "
                                                 "training and other attacks)")]


def _fraction(row: dict[str, Any], key: str) -> str | None:
    k, n = row.get(key), row.get("attack_images")
    return None if k is None or not n else f"{k}/{n}"


def format_row(row: dict[str, Any], header: bool = False) -> str:
    """One line of the per-round table (or its header); leaks as ``k/n``."""
    cells = []
    for key, title, fmt, _ in COLUMNS:
        width = len(fmt.format(0.0 if "f}" in fmt else 0))
        value = _fraction(row, key) if key in ("attack_leaked", "attack_leaked_paper") else row.get(key)
        if header:
            cells.append(title.rjust(width))
        elif value is None or (isinstance(value, float) and value != value):
            cells.append("-".rjust(width))
        elif isinstance(value, str):
            cells.append(value.rjust(width))
        else:
            cells.append(fmt.format(value))
    return " ".join(cells)


def legend() -> str:
    """What every column of the per-round table means."""
    width = max(len(title) for _, title, _, _ in COLUMNS)
    return "\n".join(f"  {title.rjust(width)}  {meaning}" for _, title, _, meaning in COLUMNS)


def closing_block(out: Path, rows: list[dict[str, Any]]) -> str:
    """The files a run wrote, and two next commands."""
    attack = sorted((out / "attack").glob("round-*.png")) if (out / "attack").is_dir() else []
    files = [("config.json", "the resolved configuration"), ("metrics.jsonl", "one JSON object per round"),
             ("summary.json", "written when the last round is done"),
             ("checkpoint.npz", "weights and state after the last round (--resume DIR continues from it)"),
             ("flower.log", "Flower's own log")]
    lines = [f"wrote in {out}:"]
    lines += [f"  {name:<22} {what}" for name, what in files if (out / name).exists()]
    if attack:
        lines.append(f"  {'attack/round-NNN.png':<22} the hook's reconstructions, {len(attack)} rounds "
                     f"(truth | reconstruction | brightness-adjusted); round-NNN.npz: the same as data")
    lines += ["next:",
              f"  python run_sim.py --defense masking:0.5 --out {out.parent / (out.name + '-masking')}   "
              f"# the same run behind a defense",
              f"  python run_sim.py rescore {out} --leak-threshold 0.6   # score the saved reconstructions again"]
    return "\n".join(lines)


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
    return ({**recorded_config(cfg), "out-dir": str(folder), "resume": True, "attack-workers": given.attack_workers},
            checkpoint_rows(checkpoint) if checkpoint else [])


def cmd_run(args: argparse.Namespace) -> int:
    from experiments.launcher import SimulationFailed, run_simulation
    from fl_defense.task import check_run_inputs

    threads = run_threads(args.threads)
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
    if not args.quiet:
        print(legend(), flush=True)
    print(format_row({}, header=True), flush=True)
    for row in done:
        print(format_row(row), flush=True)
    board = tensorboard_logger(args.tensorboard, out) if args.tensorboard else None

    def on_row(row: dict[str, Any]) -> None:
        print(format_row(row), flush=True)
        if board is not None:
            board(row)

    try:
        result = run_simulation(run_config, on_row=on_row, progress=None if args.quiet else progress_line,
                                threads=threads)
    except SimulationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if board is not None:
            board(None)
    final = result.rows[-1]
    print(f"done in {result.seconds:.0f}s: final accuracy {final.get('accuracy', float('nan')):.4f}")
    print(closing_block(result.out_dir, result.rows))
    return 0


def cmd_stop_superlink(args: argparse.Namespace) -> int:
    """``run_sim.py stop-superlink``: stop the local SuperLink of a FLWR_HOME, by PID."""
    import os

    from experiments.processes import stop_local_superlink

    home = Path(args.flwr_home or os.environ.get("FLWR_HOME") or "~/.flwr").expanduser()
    stopped = stop_local_superlink(home)
    print(f"stopped the local SuperLink of {home} (pid {', '.join(map(str, stopped))}) and its processes"
          if stopped else f"no local SuperLink of {home} is running")
    return 0


def run_threads(flag: int | None) -> int | None:
    """The ``--threads`` of a run: the flag, else ``None`` (the environment's) where
    ``OMP_NUM_THREADS`` is set, else 1.  Raises :class:`ConfigError` below 1."""
    import os

    if flag is not None and flag < 1:
        raise ConfigError(f"--threads must be >= 1, got {flag}")
    if flag is not None:
        return flag
    return None if os.environ.get("OMP_NUM_THREADS") else 1


def progress_line(text: str) -> None:
    """A line of progress from inside a round (the attack's), to stderr."""
    print(f"  ... {text}", file=sys.stderr, flush=True)


def tensorboard_logger(folder: str, out: Path):
    """A callback that logs each round's numbers, and the hook's reconstruction figure of the
    round, to a TensorBoard event file in ``folder`` (``torch.utils.tensorboard``); called with
    ``None`` it closes the file."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install -e \".[tensorboard]\"") from None
    import numpy as np
    from PIL import Image

    writer = SummaryWriter(log_dir=str(Path(folder).resolve()))

    def log(row: dict[str, Any] | None) -> None:
        if row is None:
            writer.close()
            return
        step = int(row["round"])
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round":
                writer.add_scalar(key.replace("attack_", "attack/"), value, step)
        if row.get("attack_images"):
            for key in ("attack_leaked", "attack_leaked_paper"):
                if row.get(key) is not None:
                    writer.add_scalar(f"attack/{key[7:]}_rate", row[key] / row["attack_images"], step)
        figure = out / "attack" / f"round-{step:03d}.png"
        if figure.exists():
            image = np.asarray(Image.open(figure).convert("RGB"))
            writer.add_image("attack/reconstructions", image, step, dataformats="HWC")
        writer.flush()

    return log


class GuidingParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose error for an unknown flag suggests the nearest one
    (``--defence`` -> ``--defense``); exit code 2 as argparse's own errors."""

    def error(self, message: str):
        import difflib
        import re

        found = re.match(r"unrecognized arguments: (.*)", message)
        if found:
            options = sorted({o for a in _all_actions(self) for o in a.option_strings if o.startswith("--")})
            owners = _flag_owners(self)
            hints = []
            for token in found.group(1).split():
                flag = token.split("=", 1)[0]
                if flag in owners:  # a flag of other commands, not of this one
                    key = FLAG_KEYS.get(owners[flag][1])
                    hints.append(f"{flag} (a flag of {', '.join(owners[flag][0])}"
                                 + (f"; a run takes --set {key}=VALUE)" if key else ")"))
                elif flag.startswith("--"):
                    close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
                    if close:
                        hints.append(f"{flag} (did you mean {close[0]}?)")
            if hints:
                message = f"unrecognized arguments: {'; '.join(hints)}"
        super().error(message)


#: flag dest -> config key, for naming the flag a user typed in an error about its key
FLAG_KEYS = {"max_iter": "attack-max-iter", "restarts": "attack-restarts", "tv": "attack-tv",
             "leak_threshold": "leak-threshold", "decoy_pool_size": "decoy-pool-size", "method": "attack-method",
             "attack_max_iter": "attack-max-iter", "attack_clients": "attack-clients", "attack_every": "attack-every"}


def name_the_flag(message: str, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """``message`` with the first config key that a flag the user gave maps to replaced by
    ``--flag (config key KEY)``: errors speak of the flag as typed."""
    import re

    from experiments.run_flags import RUN_FLAGS
    from experiments.setting import SETTING_FLAGS

    given = [a for a in _all_actions(parser) if a.option_strings and getattr(args, a.dest, None) is not None]
    keys = {**SETTING_FLAGS, **RUN_FLAGS, **FLAG_KEYS}
    for action in given:
        key = keys.get(action.dest)
        if key is None:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        pattern = re.compile(rf"(?<![\w-]){re.escape(key)}(?![\w-])")
        if pattern.search(message) and flag.lstrip("-") != key:
            return pattern.sub(f"{flag} (config key {key})", message, count=1)
        if pattern.search(message):
            return pattern.sub(flag, message, count=1)
    return message


def _flag_owners(parser: argparse.ArgumentParser) -> dict[str, tuple[list[str], str]]:
    """``--flag -> ([subcommands that take it], its dest)`` over ``parser``'s subcommands."""
    owners: dict[str, tuple[list[str], str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in _all_actions(sub):
                    for o in a.option_strings:
                        if o.startswith("--") and o != "--help":
                            owners.setdefault(o, ([], a.dest))[0].append(name)
    return owners


def _all_actions(parser: argparse.ArgumentParser) -> list:
    out = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_actions(sub)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = GuidingParser(prog="run_sim.py", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="fl-defense: client-side gradient defenses against gradient inversion in "
                                       "federated learning, measured on Flower simulations.\n\nWith no command "
                                       "(or `run`): one federated experiment, whose flags follow below.")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    p_run = sub.add_parser("run", help="one federated experiment through Flower's simulation engine (default)")
    add_run_flags(p_run)
    p_run.set_defaults(func=cmd_run)
    from experiments import attack_cmd, listings, rescore, sweep, train

    for command in (attack_cmd, sweep, train, rescore, listings):
        command.register(sub)
    stop = sub.add_parser("stop-superlink", help="stop, by PID, the local SuperLink that `flwr run .` started "
                                                 "(and the processes it started)")
    stop.add_argument("--flwr-home", dest="flwr_home", default=None,
                      help="the FLWR_HOME the run used (default: $FLWR_HOME, else ~/.flwr)")
    stop.set_defaults(func=cmd_stop_superlink)
    parser.epilog = "the run's flags (`run_sim.py run --help` prints the same):\n\n" + p_run.format_help()
    return parser


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    parser = build_parser()
    commands = {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}
    if not argv or (argv[0] not in commands | {"-h", "--help"}):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError) as exc:  # bad input: nothing started
        print(f"error: {name_the_flag(str(exc), args, parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
