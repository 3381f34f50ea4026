"""Run the fl-defense Flower app on Flower's Deployment Engine, on this machine, with TLS
and SuperNode authentication.

Unlike :mod:`experiments.launcher` (the simulation engine: one SuperLink runs every client
in Ray actors), a deployment is a set of separate, long-lived processes that talk HTTPS:

* one ``flower-superlink`` -- the Fleet API (SuperNodes), the Control API (``flwr`` CLI)
  and the Runtime API (ServerApp) on one port, behind TLS, with
  ``--enable-supernode-auth``: a SuperNode may only connect with a private key whose
  public key was registered beforehand through the Control API
  (``flwr supernode register``); everything else is answered *401/412*;
* ``N`` ``flower-supernode`` processes, each with ``--root-certificates`` (the CA that
  signed the SuperLink's certificate), its own ``--auth-supernode-private-key`` and
  ``--node-config "partition-id=i num-partitions=N"`` (the ClientApp reads both), and
  ``--isolation subprocess`` (the ClientApp runs in a ``flwr-clientapp`` child);
* ``flwr run <project> <connection> --stream``, where ``<connection>`` is a named
  SuperLink connection (``address``, ``root-certificates``) in a private Flower config
  file ``$FLWR_HOME/config.toml``.

:func:`deploy.credentials.generate_credentials` makes what this needs (a CA, a SuperLink
certificate, one key pair per SuperNode); see Flower's "Enable TLS connections" and
"Authenticate SuperNodes" guides
(https://flower.ai/docs/framework/how-to-enable-tls-connections.html,
https://flower.ai/docs/framework/how-to-authenticate-supernodes.html).

:class:`LocalDeployment` starts those processes on free loopback ports, each in its own
session (process group), and :meth:`LocalDeployment.stop` ends all of them -- and every
process they started, found by the private marker variable ``FL_DEFENSE_DEPLOYMENT=<id>``
in their environment and by parent PID -- on success, failure, ``KeyboardInterrupt`` or
``SIGTERM``.  As with the simulation, ``flwr run --stream`` exits 0 even when the run
failed, so success is decided by ``<out-dir>/summary.json``.

The command line that runs one deployment end to end is :mod:`deploy.run`
(``python -m deploy run ...``).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from fl_defense.config import parse_run_config
from fl_defense.io import read_jsonl
from deploy.credentials import Credentials
from experiments.launcher import PROJECT_DIR, RunResult, SimulationFailed, follow_run, free_port, prepare_out_dir
from experiments.processes import alive, kill_group, marked_processes, proc_start_time, proc_table, zombie

MARKER_ENV = "FL_DEFENSE_DEPLOYMENT"
CONNECTION_NAME = "fl-defense-deployment"
_BINDIR = Path(sys.executable).parent


class DeploymentFailed(SimulationFailed):
    """A deployment process failed to start, or the run did not complete; the message
    points at the log to read."""


def _parse_json_output(text: str) -> Any:
    """The JSON document ``flwr ... --format json`` printed (possibly after other lines)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch == "{" and (i == 0 or text[i - 1] == "\n"):
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise ValueError(f"no JSON object in the flwr output: {text[-500:]!r}")




@dataclass
class _Started:
    name: str
    proc: subprocess.Popen
    log: Path
    start: str | None = None


@dataclass
class LocalDeployment:
    """A SuperLink and its SuperNodes as separate processes on 127.0.0.1, over TLS, with
    SuperNode authentication; a context manager that stops everything it started.

    ``work_dir`` receives ``logs/<process>.log``, one ``FLWR_HOME`` per process
    (``homes/<process>``; the CLI's holds ``config.toml`` with the named connection
    :data:`CONNECTION_NAME`) and the SuperLink's ``state.db``.  Keep it outside the project
    (or under an ignored folder) -- ``flwr run`` packs the project's ``*.py``/``*.toml``/
    ``*.json`` files into the app bundle.
    """

    work_dir: Path
    credentials: Credentials
    project_dir: Path = PROJECT_DIR
    host: str = "127.0.0.1"
    marker: str = field(default_factory=lambda: uuid.uuid4().hex)
    port: int | None = None
    _started: list[_Started] = field(default_factory=list, repr=False)
    _seen: dict[int, str | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir).resolve()
        self.project_dir = Path(self.project_dir).resolve()
        if not (self.project_dir / "pyproject.toml").is_file():
            raise ValueError(f"project_dir must hold a pyproject.toml, got {str(self.project_dir)!r}")
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.cli_home = self.work_dir / "homes" / "cli"
        self.cli_home.mkdir(parents=True, exist_ok=True)

    # -- context manager
    def __enter__(self) -> "LocalDeployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the SuperLink has not been started")
        return f"{self.host}:{self.port}"

    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        for key in ("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT", "RAY_ADDRESS"):
            env.pop(key, None)
        env.update({
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            MARKER_ENV: self.marker,
        })
        return env

    def _spawn(self, name: str, cmd: list[str], *, cwd: Path | None = None,
               home: Path | None = None) -> subprocess.Popen:
        if any(s.name == name and s.proc.poll() is None for s in self._started):
            raise ValueError(f"a process named {name!r} is already running")
        log_path = self.work_dir / "logs" / f"{name}.log"
        home = home or self.work_dir / "homes" / name
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            proc = subprocess.Popen(cmd, env=self._env(home), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=cwd or home)
        self._started.append(_Started(name, proc, log_path, proc_start_time(proc.pid)))
        self._remember()
        return proc

    def process(self, name: str) -> subprocess.Popen:
        """The last process started under ``name`` (``superlink``, ``supernode-<i>``, ...)."""
        for s in reversed(self._started):
            if s.name == name:
                return s.proc
        raise KeyError(f"no process named {name!r} was started; started: {[s.name for s in self._started]}")

    def log_path(self, name: str) -> Path:
        return self.work_dir / "logs" / f"{name}.log"

    def log_text(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def _remember(self) -> None:
        """Record (PID, start time) of every process we started and their descendants, so
        that ones re-parented to init (e.g. Flower's detached SuperExec) are still ours."""
        if not os.path.isdir("/proc"):
            return
        table = proc_table()
        children: dict[int, list[int]] = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = [s.proc.pid for s in self._started if s.proc.poll() is None]
        stack += [pid for pid in marked_processes(MARKER_ENV, self.marker)]
        while stack:
            pid = stack.pop()
            if pid in self._seen and alive(pid, self._seen[pid]):
                stack.extend(c for c in children.get(pid, ()) if c not in self._seen)
                continue
            start = proc_start_time(pid)
            if start is None:
                continue
            self._seen[pid] = start
            stack.extend(children.get(pid, ()))

    # -- SuperLink
    def start_superlink(self, *, timeout: float = 90.0) -> None:
        """Start ``flower-superlink`` with TLS and ``--enable-supernode-auth`` on a free
        port and wait until ``GET https://<host>:<port>/health`` succeeds (the CA verifies
        the certificate)."""
        if self.port is not None:
            raise RuntimeError(f"the SuperLink is already running on port {self.port}")
        c = self.credentials
        self.port = free_port()
        cmd = [str(_BINDIR / "flower-superlink"),
               "--ssl-ca-certfile", str(c.ca_cert), "--ssl-certfile", str(c.server_cert),
               "--ssl-keyfile", str(c.server_key), "--enable-supernode-auth",
               "--isolation", "subprocess", "--host", self.host, "--port", str(self.port),
               "--disable-runtime-dependency-installation",
               "--database", str(self.work_dir / "superlink-state.db")]
        proc = self._spawn("superlink", cmd)
        self._write_cli_config()
        self._wait_health(proc, timeout)

    def _write_cli_config(self) -> None:
        import tomli_w

        config = {"superlink": {"default": CONNECTION_NAME,
                                CONNECTION_NAME: {"address": self.address,
                                                  "root-certificates": str(self.credentials.ca_cert)}}}
        (self.cli_home / "config.toml").write_text(tomli_w.dumps(config))

    def _wait_health(self, proc: subprocess.Popen, timeout: float) -> None:
        import httpx

        context = ssl.create_default_context(cafile=str(self.credentials.ca_cert))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DeploymentFailed(f"flower-superlink exited with code {proc.returncode}; "
                                       f"see {self.log_path('superlink')}")
            try:
                if httpx.get(f"https://{self.address}/health", verify=context, timeout=2.0).is_success:
                    self._remember()
                    return
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise DeploymentFailed(f"the SuperLink did not answer https://{self.address}/health within "
                               f"{timeout:.0f}s ({last}); see {self.log_path('superlink')}")

    # -- flwr CLI
    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run ``flwr ARGS`` with the deployment's Flower config; its output is appended
        to ``logs/cli.log`` and returned.  The command's process group is killed on
        timeout."""
        cmd = [str(_BINDIR / "flwr"), *args]
        proc = subprocess.Popen(cmd, env=self._env(self.cli_home), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.cli_home, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise DeploymentFailed(f"`flwr {' '.join(args)}` did not finish within {timeout:.0f}s")
        with open(self.log_path("cli"), "a") as log:
            log.write(f"$ {' '.join(cmd)}\n{out}{err}[exit {proc.returncode}]\n")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def register_supernode(self, public_key: str | os.PathLike, *, name: str | None = None) -> int:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode
        register``) and return the node ID the SuperLink assigned."""
        args = ["supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"]
        if name:
            args += ["--name", name]
        return int(self._flwr_json(f"registering {public_key}", *args)["node-id"])

    def list_nodes(self) -> list[dict[str, Any]]:
        """The SuperLink's SuperNodes (``flwr supernode list --format json``): dicts with
        ``node-id``, ``status`` (``registered`` | ``online`` | ``offline`` | ...), ..."""
        doc = self._flwr_json("listing SuperNodes", "supernode", "list", CONNECTION_NAME, "--format", "json")
        return list(doc.get("nodes", []))

    def _flwr_json(self, what: str, *args: str) -> dict[str, Any]:
        """Run a ``flwr ... --format json`` command; its JSON answer, or DeploymentFailed."""
        res = self.flwr(*args)
        try:
            doc = _parse_json_output(res.stdout)
        except ValueError:
            doc = {}
        if res.returncode != 0 or not doc.get("success"):
            raise DeploymentFailed(f"{what} failed (exit {res.returncode}): "
                                   f"{(res.stdout + res.stderr).strip()[-800:]}")
        return doc

    # -- SuperNodes
    def start_supernode(self, private_key: str | os.PathLike | None, partition_id: int, num_partitions: int,
                        *, name: str | None = None, max_wait_time: float | None = None) -> subprocess.Popen:
        """Start ``flower-supernode`` authenticating with ``private_key``, with
        ``--node-config "partition-id=<i> num-partitions=<n>"``, ``--isolation
        subprocess`` and its Runtime API on a free loopback port.

        ``private_key=None`` starts it without a key: Flower then makes a throw-away key
        pair and tries to register it itself, which a SuperLink with SuperNode
        authentication refuses (HTTP 412, "All SuperNodes must be registered via the CLI").
        """
        if isinstance(partition_id, bool) or isinstance(num_partitions, bool) \
                or not isinstance(partition_id, int) or not isinstance(num_partitions, int) \
                or not 0 <= partition_id < num_partitions:
            raise ValueError(f"need 0 <= partition_id < num_partitions, got partition_id={partition_id!r}, "
                             f"num_partitions={num_partitions!r}")
        if private_key is not None and not Path(private_key).is_file():
            raise ValueError(f"private_key must be a key file, got {str(private_key)!r}")
        cmd = [str(_BINDIR / "flower-supernode"), "--superlink", self.address,
               "--root-certificates", str(self.credentials.ca_cert),
               "--node-config", f"partition-id={partition_id} num-partitions={num_partitions}",
               "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(free_port())]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(Path(private_key).resolve())]
        if max_wait_time is not None:
            cmd += ["--max-wait-time", str(max_wait_time)]
        return self._spawn(name or f"supernode-{partition_id}", cmd)

    def wait_for_online(self, count: int, *, timeout: float = 90.0) -> list[dict[str, Any]]:
        """Wait until the SuperLink lists ``count`` SuperNodes as ``online``."""
        deadline = time.monotonic() + timeout
        nodes: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            for s in self._started:
                if s.name.startswith("supernode") and s.proc.poll() is not None:
                    raise DeploymentFailed(f"{s.name} exited with code {s.proc.returncode}; see {s.log}")
            nodes = self.list_nodes()
            if sum(n.get("status") == "online" for n in nodes) >= count:
                self._remember()
                return nodes
            time.sleep(0.5)
        raise DeploymentFailed(f"only {sum(n.get('status') == 'online' for n in nodes)} of {count} "
                               f"SuperNodes came online within {timeout:.0f}s; see {self.work_dir / 'logs'}")

    # -- the run
    def run_app(self, run_config: Mapping[str, Any], *, timeout: float | None = None,
                on_row: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
        """``flwr run <project> <connection> --stream --run-config <file>``; returns the
        rows of ``<out-dir>/metrics.jsonl`` once ``summary.json`` exists."""
        import tomli_w

        cfg = parse_run_config(run_config, require_out_dir=True)
        out_dir = prepare_out_dir(cfg)
        config_file = self.work_dir / "run-config.toml"
        config_file.write_text(tomli_w.dumps(cfg.to_run_config()))
        cmd = [str(_BINDIR / "flwr"), "run", str(self.project_dir), CONNECTION_NAME, "--stream",
               "--run-config", str(config_file)]
        start = time.perf_counter()
        runner = self._spawn("flwr-run", cmd, cwd=self.project_dir, home=self.cli_home)

        def check() -> None:
            for s in self._started:
                if (s.name == "superlink" or s.name.startswith("supernode-")) and s.proc.poll() is not None:
                    raise DeploymentFailed(f"{s.name} exited with code {s.proc.returncode} during the "
                                           f"run; see {s.log}")
            self._remember()

        try:
            seen = follow_run(runner, out_dir, on_row, timeout, check=check, on_timeout=lambda: DeploymentFailed(
                f"the run exceeded its {timeout:.0f}s limit; see {self.log_path('flwr-run')} and "
                f"{self.work_dir / 'logs'}"))
        finally:
            self._stop_one(runner)
        rows = read_jsonl(out_dir / "metrics.jsonl")
        for row in rows[seen:]:
            if on_row:
                on_row(row)
        if not (out_dir / "summary.json").exists():
            raise DeploymentFailed(f"the Flower run did not complete ({len(rows)} of {cfg.num_server_rounds} "
                                   f"rounds recorded); see {self.log_path('flwr-run')} and "
                                   f"{self.log_path('superlink')}")
        return RunResult(out_dir, rows, time.perf_counter() - start, self.log_path("flwr-run"), cfg)

    # -- clean-up
    def _stop_one(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self, grace: float = 10.0) -> None:
        """End every process this deployment started and their descendants: SIGTERM to
        each process group (``flwr run`` first, then the SuperNodes -- they deactivate
        themselves -- then the SuperLink), then SIGTERM/SIGKILL to any remaining process we
        recorded or that carries our marker.  Idempotent."""
        self._remember()
        for s in reversed(self._started):
            if s.proc.poll() is None:
                kill_group(s.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._leftovers():
            time.sleep(0.2)
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            left = self._leftovers()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            for s in self._started:
                if s.proc.poll() is None:
                    kill_group(s.proc.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._leftovers():
                time.sleep(0.2)
        for s in self._started:
            try:
                s.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def _leftovers(self) -> list[int]:
        for s in self._started:
            s.proc.poll()  # reap
        pids = {pid for pid, start in self._seen.items() if alive(pid, start) and not zombie(pid)}
        pids.update(marked_processes(MARKER_ENV, self.marker))
        pids.discard(os.getpid())
        return sorted(pids)

    def leftover_processes(self) -> list[int]:
        """Live processes of this deployment (by marker, recorded PID and start time)."""
        return self._leftovers()
