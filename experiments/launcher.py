"""Run the Flower app through Flower's simulation engine (``flwr run`` on Ray) and clean up.

:func:`run_simulation` validates the configuration, starts a private local SuperLink on
free loopback ports (so that concurrent runs share no state and the process we started is
the one we stop), runs ``flwr run <project> --stream`` against it, reports each round as
it lands in ``metrics.jsonl``, and stops the SuperLink's whole process group (ServerApp,
simulation, Ray) when the run ends, fails, or is interrupted.  ``flwr run --stream``
exits 0 even when the run failed, so success is decided by ``summary.json``, which the
server writes only after the last round.

Three guards around a run:

* **Orphans.**  Every process of the run carries ``FL_DEFENSE_RUN_MARK=<uuid>`` in its
  environment (the SuperLink, ``flwr run``, and all they start: the simulation, Ray's
  daemons and workers).  Besides stopping the process groups it started, the launcher
  sweeps the marked processes at the end, and a watchdog in its own session
  (:func:`experiments.processes.watch`) does the same if the launcher itself is killed
  (SIGKILL included): no process of the run outlives it by more than a few seconds.
* **One run per folder.**  The launcher writes ``launcher.json`` (its PID, start time
  and the run's marker) into the output folder while it runs; another run into that
  folder -- fresh or resumed -- is refused while that launcher lives, and after it died
  the processes it left are swept first.
* **Resume.**  ``resume = true`` continues the run in ``out-dir`` from its checkpoint
  (:mod:`strategies.checkpoint`); ``metrics.jsonl`` is cut back to the checkpoint's rows
  first.

Environment given to Flower (and why):

* ``FLWR_HOME=<project>/.flwr/<run>`` -- Flower's state and its copy of the app live in
  an ignored folder of the project, one per run.
* ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` -- otherwise every run ``uv sync``s
  the dependencies (a multi-GB torch download; offline it fails).
* ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT`` -- the
  private SuperLink's ports.
* ``FLWR_DISABLE_UPDATE_CHECK=1`` -- no network look-up.
* Two settings of the Ray that Flower starts (each unless set already; a cluster joined
  with ``ray_address`` or ``RAY_ADDRESS`` keeps its own):

  - ``RAY_worker_niceness=0`` -- Ray's workers, the ClientApp actors, run at the
    niceness of its daemons and of the simulation process instead of 15 above them: at
    15 the clients, which are a round's critical path, yield the cores to the
    simulation's threads, Ray's daemons and any other job;
  - ``RAY_max_direct_call_object_size`` = :data:`RAY_INLINE_BYTES` -- a message to or
    from a ClientApp actor (the model's arrays and the context) travels inside the call
    up to that size, instead of through Ray's shared-memory object store above Ray's
    default of 100 KiB (the shared setting's model alone is 113 KiB).

``FL_DEFENSE_FLOWER_POLL`` (inherited from this process's environment) sets how often the
simulation polls for messages (:mod:`fl_defense.flower_engine`); a bad value is refused
before anything starts.

An existing Ray cluster: ``run_simulation(..., ray_address="HOST:PORT")`` gives the run
``RAY_ADDRESS=HOST:PORT``, which ``ray.init`` (called by Flower's Ray backend without an
address) joins instead of starting a Ray of its own; Flower then sizes the actor pool from
the resources of every node of the cluster (one actor per ``client-resources-num-cpus`` =
1 CPU), so the run's clients are spread over the nodes.  Without it, a ``RAY_ADDRESS`` in
this process's environment is inherited and has the same effect.  The cluster is not the
run's: the launcher's clean-up stops only the processes the run started (the cluster's
raylets stop the run's workers when its driver, the simulation process, ends).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from experiments.processes import (alive, marked_processes, proc_start_time, stop_process_group, stop_watchdog,
                                   sweep, zombie)
from fl_defense.config import ConfigError, ExperimentConfig, parse_run_config
from fl_defense.flower_engine import poll_interval
from fl_defense.io import read_jsonl, write_json, write_jsonl
from fl_defense.quiet import quiet_third_party

PROJECT_DIR = Path(__file__).resolve().parent.parent
#: Seconds ``flwr run`` gets to end by itself once the run's last file (``summary.json``, written
#: after the last checkpoint) is there: Flower streams the end of the run's log (the last
#: round's aggregation lines) to ``flower.log`` in that time; then its processes are stopped.
TEARDOWN_GRACE = 2.0
#: The environment variable that marks every process of one run (value: a fresh uuid).
RUN_MARK = "FL_DEFENSE_RUN_MARK"
#: The file in the output folder that names the launcher writing it.
OWNER_FILE = "launcher.json"
#: Ray's ``max_direct_call_object_size`` in the Ray that Flower starts: the largest task
#: argument or result passed inside the call rather than through the object store.
RAY_INLINE_BYTES = 4 * 2**20


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


def check_ray_address(address: str, flag: str = "--ray-address", timeout: float = 5.0) -> str:
    """The ``HOST:PORT`` of a running Ray cluster's head (what ``ray start --head`` prints
    as its address), checked before any work.

    Parameters
    ----------
    address : str
        ``HOST:PORT``, the head's GCS address (``ray://`` client addresses are not
        supported: Flower's backend needs a driver on a node of the cluster).
    flag : str
        The name the messages give the value.
    timeout : float
        Seconds to wait for the head to accept a connection.

    Returns
    -------
    str
        ``address`` without surrounding blanks.

    Raises
    ------
    ConfigError
        Naming ``flag`` and the value: not ``HOST:PORT``, or nothing accepts a
        connection there.
    """
    text = str(address).strip()
    host, sep, port_text = text.rpartition(":")
    if "://" in text or not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{flag} {address!r}: want HOST:PORT, the address of a running Ray cluster's head "
                          f"(as `ray start --head` prints it, e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {text}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                          f"with `ray start --head --port={port_text}` on {host}, or fix the address") from None
    return text


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def flower_env(flwr_home: Path, http_port: int, control_port: int, marker: str | None = None,
               threads: int | None = None, ray_address: str | None = None) -> dict[str, str]:
    env = os.environ.copy()
    quiet_third_party(env)
    if marker:
        env[RUN_MARK] = marker
    if ray_address:  # ray.init() in Flower's Ray backend joins this cluster
        env["RAY_ADDRESS"] = ray_address
    if threads:  # the CPU threads of every process of the run (torch reads them at import)
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    if not env.get("RAY_ADDRESS"):  # the Ray that Flower starts (see the module docstring)
        env.setdefault("RAY_worker_niceness", "0")
        env.setdefault("RAY_max_direct_call_object_size", str(RAY_INLINE_BYTES))
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


def flwr_run_command(project_dir: Path, num_supernodes: int, extra: Sequence[str] = ()) -> list[str]:
    """``flwr run <project> --stream`` with ``num_supernodes`` single-CPU SuperNodes."""
    return [str(Path(sys.executable).parent / "flwr"), "run", str(project_dir), "--stream", *extra,
            "--federation-config", f"num-supernodes={num_supernodes} client-resources-num-cpus=1"]


def start_watchdog(marker: str, cleanup: Sequence[Path] = ()) -> subprocess.Popen:
    """Start :func:`experiments.processes.watch` in a session of its own, watching this
    process: when it is gone (however it died), every process marked with ``marker`` is
    stopped and the ``cleanup`` folders are deleted."""
    env = {k: v for k, v in os.environ.items() if k != RUN_MARK}
    cmd = [sys.executable, "-m", "experiments.processes", "watch", "--pid", str(os.getpid()),
           "--start", str(proc_start_time(os.getpid())), "--variable", RUN_MARK, "--marker", marker]
    for folder in cleanup:
        cmd += ["--cleanup", str(folder)]
    return subprocess.Popen(cmd, env=env, cwd=PROJECT_DIR, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def private_superlink(flwr_home: Path, log, marker: str | None = None,
                      threads: int | None = None, ray_address: str | None = None) -> Iterator[dict[str, str]]:
    """Start a simulation SuperLink on free loopback ports; yield the environment under
    which ``flwr run`` talks to it (with ``FL_DEFENSE_RUN_MARK=<marker>``, a fresh one
    unless given); on exit stop its whole process group, sweep every process that
    carries the marker, and delete ``flwr_home``.  A watchdog does the same if this
    process is killed."""
    marker = marker or uuid.uuid4().hex
    http_port, control_port = free_port(), free_port()
    env = flower_env(flwr_home, http_port, control_port, marker, threads, ray_address)
    cmd = [str(Path(sys.executable).parent / "flower-superlink"), "--insecure", "--simulation",
           "--isolation", "subprocess",
           "--control-api-address", f"127.0.0.1:{control_port}",
           "--host", "127.0.0.1", "--port", str(http_port),
           "--disable-runtime-dependency-installation",
           "--database", str(flwr_home / "state.db")]
    superlink = watchdog = None
    try:
        watchdog = start_watchdog(marker, cleanup=[flwr_home])
        superlink = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=flwr_home)
        _wait_health(http_port, superlink)
        yield env
    finally:
        stop_process_group(superlink)
        # what left the SuperLink's group, and what Ray started in its session while it was being stopped
        sweep(RUN_MARK, marker, sessions=() if superlink is None else (superlink.pid,))
        stop_watchdog(watchdog)
        shutil.rmtree(flwr_home, ignore_errors=True)  # Flower's state and its copy of the app


def prepare_out_dir(cfg: ExperimentConfig) -> Path:
    """Create the run's output folder and remove a previous run's outputs (rows, completion
    marker, checkpoint); with ``resume`` cut ``metrics.jsonl`` back to the checkpoint's rows
    instead."""
    from strategies.checkpoint import CHECKPOINT, checkpoint_rows, load_checkpoint

    out_dir = Path(cfg.out_dir)
    if cfg.resume:
        checkpoint = load_checkpoint(out_dir)  # a damaged checkpoint is refused here, named
        write_jsonl(out_dir / "metrics.jsonl", checkpoint_rows(checkpoint) if checkpoint else [])
        (out_dir / "summary.json").unlink(missing_ok=True)
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "summary.json", CHECKPOINT):
        (out_dir / stale).unlink(missing_ok=True)
    return out_dir


def previous_owner(out_dir: Path) -> dict[str, Any] | None:
    """What ``launcher.json`` in ``out_dir`` says (``None`` when absent or unreadable)."""
    try:
        owner = json.loads((out_dir / OWNER_FILE).read_text())
        return owner if isinstance(owner, dict) and "pid" in owner else None
    except (OSError, ValueError):
        return None


def claim_out_dir(out_dir: Path, marker: str, wait: float = 60.0) -> None:
    """Make this launcher the owner of ``out_dir`` (:data:`OWNER_FILE`).  Refused with a
    :class:`ConfigError` while the launcher named there lives; when it is dead, its
    leftover processes (found by its marker) get ``wait`` seconds to go (its watchdog's
    job) and are then stopped here."""
    owner = previous_owner(out_dir)
    if owner and int(owner["pid"]) != os.getpid():
        pid, start = int(owner["pid"]), owner.get("start")
        if alive(pid, start) and not zombie(pid):
            raise ConfigError(f"{out_dir} is in use by a running launcher (pid {pid}, "
                              f"{out_dir / OWNER_FILE}); wait for it or stop it first")
        old = str(owner.get("marker") or "")
        deadline = time.monotonic() + wait
        while old and marked_processes(RUN_MARK, old) and time.monotonic() < deadline:
            time.sleep(0.5)
        if old:
            sweep(RUN_MARK, old)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / OWNER_FILE, {"pid": os.getpid(), "start": proc_start_time(os.getpid()),
                                      "marker": marker})


def release_out_dir(out_dir: Path) -> None:
    owner = previous_owner(out_dir)
    if owner and int(owner["pid"]) == os.getpid():
        (out_dir / OWNER_FILE).unlink(missing_ok=True)


def follow_run(runner: subprocess.Popen, out_dir: Path, on_row: Callable[[dict[str, Any]], None] | None,
               timeout: float | None, on_timeout: Callable[[], Exception],
               check: Callable[[], None] | None = None, seen: int = 0,
               progress: Callable[[str], None] | None = None) -> int:
    """Report each new row of ``metrics.jsonl`` (after the first ``seen``) while ``flwr run``
    runs, until it exits or ``summary.json`` appears (then give it :data:`TEARDOWN_GRACE`
    seconds to end by itself before it is stopped); and, to ``progress``, each new line the attack hook writes while it attacks
    (:data:`strategies.hook.PROGRESS_FILE`).  ``check`` runs every poll and may raise; past
    ``timeout`` seconds ``on_timeout()`` is raised.  Returns the number of rows seen."""
    from strategies.hook import PROGRESS_FILE

    start = time.perf_counter()
    last = ""
    while True:
        done = runner.poll() is not None
        rows = read_jsonl(out_dir / "metrics.jsonl")
        for row in rows[seen:]:
            if on_row:
                on_row(row)
        seen = len(rows)
        if progress is not None:
            try:
                line = (out_dir / PROGRESS_FILE).read_text().strip()
            except OSError:
                line = ""
            if line and line != last:
                progress(line)
            last = line
        if done or (out_dir / "summary.json").exists():
            break
        if check:
            check()
        if timeout and time.perf_counter() - start > timeout:
            raise on_timeout()
        time.sleep(0.5)
    if (out_dir / "summary.json").exists():  # the run's last file: what is left is Flower's teardown
        try:
            runner.wait(timeout=TEARDOWN_GRACE)
        except subprocess.TimeoutExpired:
            pass
    return seen


def run_simulation(run_config: Mapping[str, Any], *,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   log_path: Path | None = None,
                   timeout: float | None = None,
                   project_dir: Path = PROJECT_DIR, threads: int | None = None,
                   ray_address: str | None = None,
                   progress: Callable[[str], None] | None = None,
                   stop: threading.Event | None = None) -> RunResult:
    """Run one experiment through ``flwr run`` and return its per-round rows.

    ``threads`` caps the CPU threads of every process of the run (``OMP_NUM_THREADS``;
    default: torch's own choice); runs side by side set it so that their attacks do not
    oversubscribe the cores.  ``ray_address`` (``HOST:PORT`` of a running Ray cluster's
    head, see :func:`check_ray_address`) runs the clients on that cluster instead of a Ray
    of the run's own.  ``progress`` gets the attack hook's progress lines (inside a
    round).  ``stop``, when set (by another thread), ends the run within a poll: its
    processes are stopped and :class:`SimulationFailed` is raised.

    ``run_config`` is a flat kebab-case mapping (overrides of ``[tool.flwr.app.config]``)
    and must hold an absolute ``out-dir``; a relative ``data-dir`` is taken relative to
    this process's working directory; with ``resume = true`` the run in ``out-dir``
    goes on from its checkpoint, and ``on_row`` sees only the rows after it.  Raises
    :class:`~fl_defense.config.ConfigError` before anything starts when the config is
    invalid (``FL_DEFENSE_FLOWER_POLL`` included) or the folder is in use by another
    launcher, :class:`SimulationFailed` when the run does not complete.
    """
    cfg = parse_run_config(run_config, require_out_dir=True)
    poll_interval()  # FL_DEFENSE_FLOWER_POLL, which the run's processes read, refused here when bad
    out_dir = Path(cfg.out_dir)
    marker = uuid.uuid4().hex
    claim_out_dir(out_dir, marker)
    try:
        return _run(cfg, out_dir, marker, on_row, log_path, timeout, project_dir, threads, ray_address,
                    progress, stop)
    finally:
        release_out_dir(out_dir)


def _run(cfg: ExperimentConfig, out_dir: Path, marker: str, on_row, log_path, timeout, project_dir,
         threads: int | None = None, ray_address: str | None = None,
         progress: Callable[[str], None] | None = None, stop: threading.Event | None = None) -> RunResult:
    prepare_out_dir(cfg)
    seen = len(read_jsonl(out_dir / "metrics.jsonl")) if cfg.resume else 0
    log_path = Path(log_path) if log_path else out_dir / "flower.log"
    flwr_root = project_dir / ".flwr"
    flwr_root.mkdir(exist_ok=True)
    flwr_home = Path(tempfile.mkdtemp(prefix="run-", dir=flwr_root))

    overrides = cfg.to_run_config()
    if overrides.get("data-dir"):  # Flower's processes run elsewhere: a relative folder means this one's
        overrides["data-dir"] = str(Path(overrides["data-dir"]).expanduser().resolve())
    config_file = flwr_home / "run-config.toml"
    config_file.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in overrides.items()))

    run_cmd = flwr_run_command(project_dir, cfg.num_clients, ["--run-config", str(config_file)])
    start = time.perf_counter()
    with open(log_path, "ab") as log, private_superlink(flwr_home, log, marker, threads, ray_address) as env:
        runner = subprocess.Popen(run_cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True, cwd=project_dir)
        try:
            def stopped() -> None:
                if stop is not None and stop.is_set():
                    raise SimulationFailed(f"stopped before the run completed; see {log_path}")

            seen = follow_run(runner, out_dir, on_row, timeout, check=stopped, seen=seen, progress=progress,
                              on_timeout=lambda: SimulationFailed(f"the run exceeded its {timeout:.0f}s limit; "
                                                                  f"see {log_path}"))
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
