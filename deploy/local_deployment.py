"""Run the fl-defense Flower app on Flower's Deployment Engine, on this machine, with TLS
and SuperNode authentication.

Unlike :mod:`fl_defense.launcher` (the simulation engine: one SuperLink runs every client
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

:func:`generate_credentials` makes what this needs with the ``cryptography`` package: a
self-signed CA (ECDSA P-384), a server certificate for the SuperLink signed by it (its
``subjectAltName`` lists the host names / IP addresses the SuperNodes dial; default
``127.0.0.1`` and ``localhost``) and one ECDSA P-384 key pair per SuperNode in OpenSSH
format (what ``flower-supernode`` and ``flwr supernode register`` read; Flower accepts
NIST curves only).  See Flower's "Enable TLS connections" and "Authenticate SuperNodes"
guides (https://flower.ai/docs/framework/how-to-enable-tls-connections.html,
https://flower.ai/docs/framework/how-to-authenticate-supernodes.html).

:class:`LocalDeployment` starts those processes on free loopback ports, each in its own
session (process group), and :meth:`LocalDeployment.stop` ends all of them -- and every
process they started, found by the private marker variable ``FL_DEFENSE_DEPLOYMENT=<id>``
in their environment and by parent PID -- on success, failure, ``KeyboardInterrupt`` or
``SIGTERM``.  As with the simulation, ``flwr run --stream`` exits 0 even when the run
failed, so success is decided by ``<out-dir>/summary.json``.

Command line (one command: credentials, SuperLink, SuperNodes, run, clean-up)::

    python -m deploy.local_deployment run --supernodes 2 \\
        --set num-server-rounds=2 --set local-steps=2

    python -m deploy.local_deployment credentials ./certs --supernodes 3 \\
        --host 10.0.0.5 --host superlink.lab.example   # for a multi-machine deployment
"""

from __future__ import annotations

import argparse
import datetime as _dt
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

if __package__ in (None, ""):  # ``python deploy/local_deployment.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fl_defense.config import parse_run_config
from fl_defense.io import read_jsonl
from fl_defense.launcher import PROJECT_DIR, RunResult, SimulationFailed, follow_run, free_port, prepare_out_dir

MARKER_ENV = "FL_DEFENSE_DEPLOYMENT"
CONNECTION_NAME = "fl-defense-deployment"
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_BINDIR = Path(sys.executable).parent


class DeploymentFailed(SimulationFailed):
    """A deployment process failed to start, or the run did not complete; the message
    points at the log to read."""


# --------------------------------------------------------------------------------------
# Credentials


@dataclass(frozen=True)
class SuperNodeKey:
    """One SuperNode's ECDSA P-384 key pair, OpenSSH format."""

    private: Path
    public: Path


@dataclass(frozen=True)
class Credentials:
    """Paths of everything :func:`generate_credentials` wrote.

    ``ca_cert`` goes to every SuperNode and ``flwr`` CLI (``--root-certificates`` /
    ``root-certificates``); ``server_cert``/``server_key`` (and ``ca_cert``) to the
    SuperLink; ``supernode_keys[i].private`` to SuperNode ``i`` only, its ``.public`` to
    whoever registers it.  ``ca_key`` signs further server certificates; keep it offline.
    """

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    supernode_keys: tuple[SuperNodeKey, ...]
    hosts: tuple[str, ...]


def _crypto():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _pem_key(key) -> bytes:
    _, _, serialization, _, _, _ = _crypto()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san_entries(hosts: Sequence[str]):
    x509 = _crypto()[0]
    entries = []
    for host in hosts:
        if not isinstance(host, str) or not host.strip() or any(c.isspace() for c in host):
            raise ValueError(f"a certificate host must be a host name or an IP address, got {host!r}")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def generate_supernode_key(private_path: str | os.PathLike, public_path: str | os.PathLike, *,
                           comment: str = "") -> SuperNodeKey:
    """Write a fresh ECDSA P-384 key pair for SuperNode authentication.

    The private key is written in OpenSSH format (mode 0600; ``flower-supernode
    --auth-supernode-private-key`` reads it with ``load_ssh_private_key``), the public key
    as one ``ecdsa-sha2-nistp384 AAAA... [comment]`` line (``flwr supernode register``
    reads it with ``load_ssh_public_key``).  Keys are random, by design not seeded.
    """
    _, _, serialization, ec, _, _ = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private_path, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.write_bytes(public + (b" " + comment.encode() if comment else b"") + b"\n")
    return SuperNodeKey(private_path, public_path)


def generate_credentials(folder: str | os.PathLike, num_supernodes: int, *,
                         hosts: Sequence[str] = DEFAULT_HOSTS, valid_days: int = 30,
                         prefix: str = "supernode") -> Credentials:
    """Write a CA, a SuperLink server certificate and ``num_supernodes`` SuperNode key
    pairs into ``folder``.

    Files: ``ca.crt``/``ca.key`` (self-signed CA, ``basicConstraints CA:TRUE``,
    ``keyUsage keyCertSign``), ``server.crt``/``server.key`` (signed by the CA,
    ``subjectAltName`` = ``hosts`` -- IP addresses as ``iPAddress``, names as ``dNSName``
    -- ``extendedKeyUsage serverAuth``), and ``<prefix>-<i>`` / ``<prefix>-<i>.pub`` for
    ``i`` in ``0..num_supernodes-1`` (see :func:`generate_supernode_key`).  All keys are
    ECDSA P-384 and random (not seeded).  TLS clients check the address they dial against
    the SAN, so ``hosts`` must hold every address SuperNodes and the CLI use for the
    SuperLink (the SuperLink's own ServerApp runner dials ``127.0.0.1``; keep it when the
    SuperLink binds ``0.0.0.0``).
    """
    if isinstance(num_supernodes, bool) or not isinstance(num_supernodes, int) or num_supernodes < 0:
        raise ValueError(f"num_supernodes must be an integer >= 0, got {num_supernodes!r}")
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days < 1:
        raise ValueError(f"valid_days must be an integer >= 1, got {valid_days!r}")
    hosts = tuple(hosts)
    if not hosts:
        raise ValueError("hosts must name at least one host name or IP address, got ()")
    sans = _san_entries(hosts)
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    x509, hashes, serialization, ec, EKU, NameOID = _crypto()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl-defense"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "fl-defense deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (x509.CertificateBuilder()
               .subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ca_ski, critical=False)
               .sign(ca_key, hashes.SHA384()))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fl-defense"),
                                            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
                   .issuer_name(ca_name)
                   .public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(until)
                   .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False,
                                                key_agreement=True, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                                  critical=False)
                   .sign(ca_key, hashes.SHA384()))

    paths = {name: folder / name for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["ca.key"], _pem_key(ca_key))
    paths["server.crt"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["server.key"], _pem_key(server_key))
    keys = tuple(generate_supernode_key(folder / f"{prefix}-{i}", folder / f"{prefix}-{i}.pub",
                                        comment=f"{prefix}-{i}")
                 for i in range(num_supernodes))
    return Credentials(folder, paths["ca.crt"], paths["ca.key"], paths["server.crt"],
                       paths["server.key"], keys, hosts)


# --------------------------------------------------------------------------------------
# Processes


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks): with the PID it
    names one process, so a PID reused by someone else is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _proc_table() -> dict[int, int]:
    """``pid -> parent pid`` of every process we can see (Linux ``/proc``)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return table


def marked_processes(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``FL_DEFENSE_DEPLOYMENT=<marker>``
    (every process a :class:`LocalDeployment` started, and their children, which inherit
    it).  Empty where ``/proc`` is unavailable."""
    if not marker:
        raise ValueError(f"marker must be a non-empty string, got {marker!r}")
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def _alive(pid: int, start: str | None) -> bool:
    now = _proc_start_time(pid)
    return now is not None and (start is None or now == start)


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
        self._started.append(_Started(name, proc, log_path, _proc_start_time(proc.pid)))
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
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, ppid in table.items():
            children.setdefault(ppid, []).append(pid)
        stack = [s.proc.pid for s in self._started if s.proc.poll() is None]
        stack += [pid for pid in marked_processes(self.marker)]
        while stack:
            pid = stack.pop()
            if pid in self._seen and _alive(pid, self._seen[pid]):
                stack.extend(c for c in children.get(pid, ()) if c not in self._seen)
                continue
            start = _proc_start_time(pid)
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
            _kill_group(proc.pid, signal.SIGKILL)
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
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
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
                _kill_group(s.proc.pid, signal.SIGTERM)
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
                    _kill_group(s.proc.pid, sig)
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
        pids = {pid for pid, start in self._seen.items() if _alive(pid, start) and not _zombie(pid)}
        pids.update(marked_processes(self.marker))
        pids.discard(os.getpid())
        return sorted(pids)

    def leftover_processes(self) -> list[int]:
        """Live processes of this deployment (by marker, recorded PID and start time)."""
        return self._leftovers()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_group(pid: int, sig: int) -> None:
    """Signal the process group that ``pid`` leads (we start every process with
    ``start_new_session=True``, so its PGID is its PID)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------------------
# One call / one command


def run_deployment(run_config: Mapping[str, Any], *, work_dir: str | os.PathLike | None = None,
                   num_supernodes: int | None = None, project_dir: Path = PROJECT_DIR,
                   timeout: float | None = None, startup_timeout: float = 120.0,
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   on_event: Callable[[str], None] | None = None) -> RunResult:
    """Generate credentials, start a TLS SuperLink with SuperNode authentication and
    ``num_supernodes`` (default: ``num-clients``) authenticated SuperNodes on 127.0.0.1,
    run the app once, and stop everything (also on failure or ``KeyboardInterrupt``).

    ``run_config`` is a flat kebab-case mapping with an absolute ``out-dir``;
    ``num-clients`` must equal ``num_supernodes`` (the ClientApp checks it too).  Raises
    :class:`~fl_defense.config.ConfigError` / ``ValueError`` before anything starts on bad
    input, :class:`DeploymentFailed` when the run does not complete.
    """
    cfg = parse_run_config(run_config, require_out_dir=True)
    n = cfg.num_clients if num_supernodes is None else num_supernodes
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_supernodes must be an integer >= 1, got {num_supernodes!r}")
    if n != cfg.num_clients:
        raise ValueError(f"num_supernodes ({n}) must equal the run config's num-clients ({cfg.num_clients})")
    say = on_event or (lambda msg: None)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="fl-defense-deploy-"))
    t0 = time.perf_counter()
    creds = generate_credentials(work / "credentials", n)
    say(f"credentials: CA, server certificate for {', '.join(creds.hosts)} and {n} SuperNode key "
        f"pairs in {creds.folder}")
    with LocalDeployment(work, creds, project_dir=project_dir) as dep:
        dep.start_superlink(timeout=startup_timeout)
        say(f"SuperLink: https://{dep.address} (TLS, SuperNode authentication on), pid "
            f"{dep.process('superlink').pid}, log {dep.log_path('superlink')}")
        for i, key in enumerate(creds.supernode_keys):
            node_id = dep.register_supernode(key.public, name=f"supernode-{i}")
            say(f"registered {key.public.name} as node {node_id}")
        for i, key in enumerate(creds.supernode_keys):
            proc = dep.start_supernode(key.private, i, n)
            say(f"SuperNode {i}: pid {proc.pid}, partition-id={i} num-partitions={n}")
        dep.wait_for_online(n, timeout=startup_timeout)
        say(f"{n} SuperNodes online after {time.perf_counter() - t0:.1f}s; flwr run "
            f"{dep.project_dir} {CONNECTION_NAME}")
        result = dep.run_app(run_config, timeout=timeout, on_row=on_row)
    left = dep.leftover_processes()
    say(f"stopped all deployment processes ({len(left)} left); total {time.perf_counter() - t0:.1f}s")
    return result


def _sigterm_to_keyboard_interrupt(signum, frame):  # pragma: no cover - signal path
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    from fl_defense.cli import format_row, parse_set_value

    parser = argparse.ArgumentParser(prog="python -m deploy.local_deployment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="credentials + SuperLink + SuperNodes + flwr run, on 127.0.0.1")
    run.add_argument("--supernodes", type=int, default=2, help="number of SuperNodes (= num-clients)")
    run.add_argument("--work-dir", type=Path, help="credentials, logs, Flower homes (default: a temp folder)")
    run.add_argument("--out", type=Path, help="run output folder (default: <work-dir>/out)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="run-config override, e.g. --set num-server-rounds=2 (repeatable)")
    run.add_argument("--timeout", type=float, default=None, help="seconds before the run is abandoned")
    cred = sub.add_parser("credentials", help="only write a CA, server certificate and SuperNode keys")
    cred.add_argument("folder", type=Path)
    cred.add_argument("--supernodes", type=int, default=2)
    cred.add_argument("--host", action="append", default=[], metavar="NAME_OR_IP",
                      help="an address the SuperLink is reached at (repeatable; 127.0.0.1 and "
                           "localhost are always included)")
    cred.add_argument("--days", type=int, default=30)
    args = parser.parse_args(argv)

    if args.command == "credentials":
        hosts = list(dict.fromkeys([*args.host, *DEFAULT_HOSTS]))
        creds = generate_credentials(args.folder, args.supernodes, hosts=hosts, valid_days=args.days)
        print(f"wrote {creds.ca_cert}, {creds.server_cert} (SAN: {', '.join(creds.hosts)}), "
              f"{creds.server_key} and {len(creds.supernode_keys)} SuperNode key pairs "
              f"({', '.join(k.private.name for k in creds.supernode_keys)}) in {creds.folder}")
        return 0

    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="fl-defense-deploy-"))).resolve()
    out = (args.out or work / "out").resolve()
    overrides: dict[str, Any] = {"num-clients": args.supernodes}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set wants KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_set_value(value.strip())
    overrides["out-dir"] = str(out)
    # Ctrl-C and SIGTERM stop the deployment cleanly (also when started from a script,
    # where a background job inherits SIGINT as ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_to_keyboard_interrupt)
    print(f"fl-defense deployment: {args.supernodes} SuperNodes; work dir {work}; output {out}", flush=True)
    header = [False]

    def on_row(row):
        if not header[0]:
            print(format_row({}, header=True), flush=True)
            header[0] = True
        print(format_row(row), flush=True)

    try:
        result = run_deployment(overrides, work_dir=work, num_supernodes=args.supernodes,
                                timeout=args.timeout, on_row=on_row,
                                on_event=lambda msg: print(msg, flush=True))
    except (SimulationFailed, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; all deployment processes stopped", file=sys.stderr)
        return 130
    final = result.rows[-1] if result.rows else {}
    print(f"done: {len(result.rows)} rounds in {result.seconds:.1f}s, final accuracy "
          f"{final.get('accuracy', float('nan')):.4f}; wrote {result.out_dir / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
