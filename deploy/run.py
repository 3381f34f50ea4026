"""One call, one command: credentials, a TLS SuperLink with SuperNode authentication,
authenticated SuperNodes, the run, and the clean-up.

    python -m deploy run --supernodes 2 --set num-server-rounds=2 --set local-steps=2
    python -m deploy credentials ./certs --supernodes 3 --host 10.0.0.5
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from deploy.credentials import DEFAULT_HOSTS, generate_credentials
from deploy.local_deployment import CONNECTION_NAME, LocalDeployment
from experiments.launcher import PROJECT_DIR, RunResult, SimulationFailed
from fl_defense.config import parse_run_config


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
    from experiments.cli import format_row
    from experiments.setting import parse_sets
    from fl_defense.errors import ConfigError

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
    try:
        overrides.update(parse_sets(args.set))
    except ConfigError as exc:
        parser.error(str(exc))
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


if __name__ == "__main__":  # python -m deploy.run
    sys.exit(main())
