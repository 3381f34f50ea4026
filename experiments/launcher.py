"""Run the Flower app through Flower's simulation engine (``flwr run`` on Ray) and clean up.

:func:`run_simulation` validates the configuration, starts a private local SuperLink on
free loopback ports (so that concurrent runs share no state and the process we started is
the one we stop), runs ``flwr run <project> --stream`` against it, reports each round as
it lands in ``metrics.jsonl``, and stops the SuperLink's whole process group (ServerApp,
simulation, Ray) when the run ends, fails, or is interrupted.  ``flwr run --stream``
exits 0 even when the run failed, so success is decided by ``summary.json``, which the
server writes only after the last round.

Environment given to Flower (and why):

* ``FLWR_HOME=<project>/.flwr/<run>`` -- Flower's state and its copy of the app live in
  an ignored folder of the project, one per run.
* ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` -- otherwise every run ``uv sync``s
  the dependencies (a multi-GB torch download; offline it fails).
* ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT`` -- the
  private SuperLink's ports.
* ``FLWR_DISABLE_UPDATE_CHECK=1`` -- no network look-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from fl_defense.config import ExperimentConfig, parse_run_config
from fl_defense.io import read_jsonl

PROJECT_DIR = Path(__file__).resolve().parent.parent


class SimulationFailed(RuntimeError):
    """The Flower run did not complete; the message points at the log."""


@dataclass
class RunResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    seconds: float
    log_path: Path
    config: ExperimentConfig = field(repr=False, default=None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def flower_env(flwr_home: Path, http_port: int, control_port: int) -> dict[str, str]:
    env = os.environ.copy()
    env.update({
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _wait_health(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationFailed(f"the local SuperLink exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SimulationFailed(f"the local SuperLink did not answer on port {port} within {timeout:.0f}s")


def stop_process_group(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM the process group started with ``proc`` (it leads its own session), then
    SIGKILL what is left after ``grace`` seconds."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            continue
        break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def flwr_run_command(project_dir: Path, num_supernodes: int, extra: Sequence[str] = ()) -> list[str]:
    """``flwr run <project> --stream`` with ``num_supernodes`` single-CPU SuperNodes."""
    return [str(Path(sys.executable).parent / "flwr"), "run", str(project_dir), "--stream", *extra,
            "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1"]


@contextlib.contextmanager
def private_superlink(flwr_home: Path, log) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink on free loopback ports; yield the environment under
    which ``flwr run`` talks to it; stop its whole process group and delete ``flwr_home``
    on exit."""
    http_port, control_port = free_port(), free_port()
    env = flower_env(flwr_home, http_port, control_port)
    cmd = [str(Path(sys.executable).parent / "flower-superlink"), "--insecure", "--simulation",
           "--isolation", "subprocess",
           "--control-api-address", f"127.0.0.1:{control_port}",
           "--host", "127.0.0.1", "--port", str(http_port),
           "--disable-runtime-dependency-installation",
           "--database", str(flwr_home / "state.db")]
    superlink = None
    try:
        superlink = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=flwr_home)
        _wait_health(http_port, superlink)
        yield env
    finally:
        stop_process_group(superlink)
        shutil.rmtree(flwr_home, ignore_errors=True)  # Flower's state and its copy of the app


def prepare_out_dir(cfg: ExperimentConfig) -> Path:
    """Create the run's output folder and remove a previous run's completion markers."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "summary.json"):
        (out_dir / stale).unlink(missing_ok=True)
    return out_dir


def follow_run(runner: subprocess.Popen, out_dir: Path, on_row: Callable[[dict[str, Any]], None] | None,
               timeout: float | None, on_timeout: Callable[[], Exception],
               check: Callable[[], None] | None = None) -> int:
    """Report each new row of ``metrics.jsonl`` while ``flwr run`` runs, until it exits or
    ``summary.json`` appears (then give it 30 s to close its stream).  ``check`` runs every
    poll and may raise; past ``timeout`` seconds ``on_timeout()`` is raised.  Returns the
    number of rows reported."""
    start = time.perf_counter()
    seen = 0
    while True:
        done = runner.poll() is not None
        rows = read_jsonl(out_dir / "metrics.jsonl")
        for row in rows[seen:]:
            if on_row:
                on_row(row)
        seen = len(rows)
        if done or (out_dir / "summary.json").exists():
            break
        if check:
            check()
        if timeout and time.perf_counter() - start > timeout:
            raise on_timeout()
        time.sleep(0.5)
    if (out_dir / "summary.json").exists():
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    return seen


def run_simulation(run_config: Mapping[str, Any], *,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   log_path: Path | None = None,
                   timeout: float | None = None,
                   project_dir: Path = PROJECT_DIR) -> RunResult:
    """Run one experiment through ``flwr run`` and return its per-round rows.

    ``run_config`` is a flat kebab-case mapping (overrides of ``[tool.flwr.app.config]``)
    and must hold an absolute ``out-dir``.  Raises :class:`~fl_defense.config.ConfigError`
    before anything starts when the config is invalid, :class:`SimulationFailed` when the
    run does not complete.
    """
    cfg = parse_run_config(run_config, require_out_dir=True)
    out_dir = prepare_out_dir(cfg)
    log_path = Path(log_path) if log_path else out_dir / "flower.log"
    flwr_root = project_dir / ".flwr"
    flwr_root.mkdir(exist_ok=True)
    flwr_home = Path(tempfile.mkdtemp(prefix="run-", dir=flwr_root))

    overrides = cfg.to_run_config()
    config_file = flwr_home / "run-config.toml"
    config_file.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in overrides.items()))

    run_cmd = flwr_run_command(project_dir, cfg.num_clients, ["--run-config", str(config_file)])
    start = time.perf_counter()
    with open(log_path, "ab") as log, private_superlink(flwr_home, log) as env:
        runner = subprocess.Popen(run_cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, cwd=project_dir)
        try:
            seen = follow_run(runner, out_dir, on_row, timeout, on_timeout=lambda: SimulationFailed(
                f"the run exceeded its {timeout:.0f}s limit; see {log_path}"))
        finally:
            stop_process_group(runner)
    rows = read_jsonl(out_dir / "metrics.jsonl")
    for row in rows[seen:]:
        if on_row:
            on_row(row)
    if not (out_dir / "summary.json").exists():
        raise SimulationFailed(f"the Flower run did not complete ({len(rows)} of "
                               f"{cfg.num_server_rounds} rounds recorded); see {log_path}")
    return RunResult(out_dir, rows, time.perf_counter() - start, log_path, cfg)
