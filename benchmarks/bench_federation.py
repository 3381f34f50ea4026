"""Benchmark: Flower's simulation against the same local training done by plain PyTorch.

For each federation size (default: 10 clients with ``fraction-fit`` 1.0, 100 with 0.1 and
1000 with 0.01, i.e. 10 clients trained per round in every case) it runs

* **plain**: one Python process (a child of this one, so that its peak memory is its own),
  one torch thread by default, that loads the data, and each round trains the sampled clients one after the other with
  :func:`fl_defense.task.defended_payload` -- the exact code path of a client's ``fit`` --
  aggregates their uploads by the element-wise mean in client order
  (:func:`strategies.aggregation.aggregate_arrays`, as ``RobustAggregation``) and evaluates
  on the test split, as the server does;
* **flower**: the same experiment through ``flwr run`` on Ray
  (:func:`experiments.launcher.run_simulation`: a private SuperLink, the ServerApp, the
  ClientApps in Ray actors, one CPU each).

It prints, per size, the steady per-round time of each (the median of rounds 2..R) and
their ratio flower / plain, the start-up cost apart (wall time minus R steady rounds: for
Flower the SuperLink, Ray and the actors, for plain the imports, data and partitions), the
final accuracy of each, and the peak resident memory (``VmHWM`` of ``/proc/<pid>/status``,
sampled every 0.2 s while the run lives) of the plain process, of the server process
(``flwr-simulation``: the ServerApp and the Ray driver), of each client process (the Ray
``ClientAppActor`` workers) and of the other processes of the run together (SuperLink,
SuperExec, Ray's own daemons).

Client sampling: Flower's run samples with the seeded sampler of ``strategies/sampling.py``
and the plain reference draws the round's clients with the same rule
(:func:`fl_defense.partition.sample_positions`), as many as Flower's ``FedAvg`` samples
(``max(int(fraction * clients), 1)``), so both train the same clients every round and their
final accuracies must agree.

Flower's polling (:mod:`fl_defense.flower_engine`): ``--flower-poll`` runs the Flower side
once per value given, each a row of the table against the same plain run: ``off`` is
Flower's own polling (0.1 s), a number the interval in seconds; by default the
environment's ``FL_DEFENSE_FLOWER_POLL`` (unset: 5 ms).

Repeats (``--repeats R``): the plain run and the Flower runs of a size are made R times,
alternating (plain, Flower, plain, Flower, ...), so that a machine whose speed drifts
slows both sides alike; each pair gives a ratio, and the table's ratio is the median of
the R ratios (the seconds per round the medians of each side), printed with every ratio.

Run it from the project's root, as a module:

    python -m benchmarks.bench_federation                     # 10, 100, 1000 clients, 5 rounds
    python -m benchmarks.bench_federation --sizes 10:1.0 --rounds 3
    python -m benchmarks.bench_federation --sizes 10:1.0 --rounds 20 --flower-poll off,0.005
    python -m benchmarks.bench_federation --sizes 10:1.0 --rounds 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MARK_VARIABLE = "FL_DEFENSE_BENCH_MARK"
DEFAULT_SIZES = "10:1.0,100:0.1,1000:0.01"


def parse_sizes(text: str) -> list[tuple[int, float]]:
    """``"10:1.0,100:0.1"`` -> ``[(10, 1.0), (100, 0.1)]``; raises ``ValueError`` naming the bad item."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        clients, sep, frac = item.partition(":")
        try:
            n, f = int(clients), float(frac) if sep else 1.0
        except ValueError:
            raise ValueError(f"--sizes item {item!r} is not CLIENTS:FRACTION") from None
        if n < 1 or not 0 < f <= 1:
            raise ValueError(f"--sizes item {item!r}: need CLIENTS >= 1 and 0 < FRACTION <= 1")
        out.append((n, f))
    if not out:
        raise ValueError(f"--sizes {text!r} names no federation")
    return out


def num_fit_clients(num_clients: int, fraction: float) -> int:
    """How many clients Flower's ``FedAvg`` samples per round (``min_fit_clients`` = 1)."""
    return max(int(num_clients * fraction), 1)


def sample_clients(seed: int, server_round: int, num_clients: int, fraction: float) -> list[int]:
    """The plain reference's clients of a round: as many as Flower's ``FedAvg`` samples,
    drawn by the server's own seeded rule (:func:`fl_defense.partition.sample_positions`),
    so both runs train the same clients."""
    from fl_defense.partition import sample_positions

    k = num_fit_clients(num_clients, fraction)
    if k >= num_clients:
        return list(range(num_clients))
    return [int(c) for c in sample_positions(seed, server_round, num_clients, k)]


def read_hwm(pid: int | str = "self") -> int | None:
    """Peak resident set size (``VmHWM``) of a process in bytes, or ``None`` if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def classify(cmdline: str) -> str:
    """Which part of a Flower simulation a process is, from its command line."""
    if "ClientAppActor" in cmdline:
        return "client"
    if "flwr-simulation" in cmdline:
        return "server"
    return "other"


class MemorySampler(threading.Thread):
    """Polls the processes marked with ``MARK_VARIABLE=marker`` and keeps each one's last
    ``VmHWM`` (the peak so far) and what it is."""

    def __init__(self, marker: str, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.marker, self.period = marker, period
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        from experiments.processes import marked_processes

        while not self._stop_event.is_set():
            for pid in marked_processes(MARK_VARIABLE, self.marker):
                hwm = read_hwm(pid)
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace")
                except OSError:
                    continue
                if hwm is not None:
                    kind = classify(cmd)
                    prev = self.peaks.get(pid)
                    self.peaks[pid] = (kind, max(hwm, prev[1] if prev else 0))
            self._stop_event.wait(self.period)

    def stop(self) -> dict[str, list[int]]:
        self._stop_event.set()
        self.join(timeout=5)
        out: dict[str, list[int]] = {"server": [], "client": [], "other": []}
        for kind, hwm in self.peaks.values():
            out[kind].append(hwm)
        return out


def parse_polls(text: str | None) -> list[str | None]:
    """``"off,0.005"`` -> ``["off", "0.005"]`` (each checked as ``FL_DEFENSE_FLOWER_POLL``
    would be); ``None`` -> ``[None]`` (the environment's).  Raises ``ValueError`` naming
    ``--flower-poll`` and the bad item."""
    from fl_defense.flower_engine import ENV, poll_interval

    if text is None:
        return [None]
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--flower-poll {text!r} names no value")
    for item in items:
        try:
            poll_interval({ENV: item})
        except ValueError as exc:
            raise ValueError(f"--flower-poll item {item!r}: {exc}") from None
    return items


def run_config(num_clients: int, fraction: float, rounds: int, seed: int, out_dir: Path) -> dict:
    # the hook off: the benchmark measures the federation, which the plain reference mirrors
    return {"num-clients": num_clients, "fraction-fit": fraction, "num-server-rounds": rounds,
            "seed": seed, "out-dir": str(out_dir), "attack-every": 0}


def steady(seconds: list[float]) -> float:
    """Median round time of rounds 2..R (round 1 alone when there is only one)."""
    return statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]


def plain_worker(spec: dict) -> dict:
    """The plain-PyTorch federation of ``spec`` in this process; returns its timings."""
    t0 = time.perf_counter()
    import torch

    from fl_defense.config import parse_run_config
    from fl_defense.models import state_kinds
    from fl_defense.task import (client_indices, defended_payload, evaluate_model, get_weights,
                                 load_data, new_model, payload_to_weights, select_device,
                                 set_weights)
    from strategies.aggregation import aggregate_arrays

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    cfg = parse_run_config(spec["config"])
    train, test = load_data(cfg)
    device = select_device()
    server_model = new_model(cfg, train)
    client_model = new_model(cfg, train)
    kinds = state_kinds(server_model)
    global_w = get_weights(server_model)
    client_indices(cfg, 0)  # the partitions (memoised), as each Flower client process does once
    seconds, accuracy = [], []
    for rnd in range(1, cfg.num_server_rounds + 1):
        start = time.perf_counter()
        uploads = []
        for cid in sample_clients(cfg.seed, rnd, cfg.num_clients, cfg.fraction_fit):
            idx = client_indices(cfg, cid)
            defended, _, _ = defended_payload(cfg, client_model, kinds, global_w, train.images[idx],
                                              train.labels[idx], cid, rnd, device)
            uploads.append(payload_to_weights(global_w, defended, kinds))
        global_w = aggregate_arrays(uploads, cfg.aggregation)
        set_weights(server_model, global_w)
        _, acc = evaluate_model(server_model, test.images, test.labels, device)
        seconds.append(time.perf_counter() - start)
        accuracy.append(acc)
    return {"seconds": seconds, "accuracy": accuracy, "wall": time.perf_counter() - t0,
            "threads": torch.get_num_threads(), "device": str(device), "peak_rss": read_hwm()}


def run_plain(num_clients: int, fraction: float, rounds: int, seed: int, threads: int) -> dict:
    """:func:`plain_worker` in a fresh Python process (its own imports, memory and timing)."""
    spec = {"config": run_config(num_clients, fraction, rounds, seed, Path(tempfile.gettempdir())),
            "threads": threads}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_federation", "--plain-worker", json.dumps(spec)],
                          capture_output=True, text=True, check=False, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"the plain reference failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - start  # the process's start and imports included
    return out


def run_flower(num_clients: int, fraction: float, rounds: int, seed: int, out_root: Path,
               timeout: float, poll: str | None = None) -> dict:
    """The same federation through ``flwr run`` (experiments.launcher), memory sampled;
    ``poll`` (when given) is the run's ``FL_DEFENSE_FLOWER_POLL``."""
    from experiments.launcher import run_simulation
    from fl_defense.flower_engine import ENV

    out_dir = out_root / f"flower-{num_clients}" if poll is None else out_root / f"flower-{num_clients}-poll-{poll}"
    marker = uuid.uuid4().hex
    saved = {name: os.environ.get(name) for name in (MARK_VARIABLE, ENV)}
    os.environ[MARK_VARIABLE] = marker  # inherited by SuperLink, ServerApp, Ray and its actors
    if poll is not None:
        os.environ[ENV] = poll
    sampler = MemorySampler(marker)
    sampler.start()
    start = time.perf_counter()
    try:
        result = run_simulation(run_config(num_clients, fraction, rounds, seed, out_dir),
                                timeout=timeout)
    finally:
        wall = time.perf_counter() - start
        memory = sampler.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return {"seconds": [float(r["seconds"]) for r in result.rows],
            "accuracy": [float(r["accuracy"]) for r in result.rows],
            "clients_ok": [int(r.get("clients_ok", 0)) for r in result.rows],
            "wall": wall, "memory": memory, "log": str(result.log_path)}


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per federation size and polling value, over its repeats: the median
    steady seconds per round of each side, every repeat's ratio flower / plain (the
    repeat's own plain run as the reference) and their median, and the final accuracies
    (of the last repeat; every repeat trains the same clients with the same seeds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["clients"], r["fraction"], r.get("poll")), []).append(r)
    out = []
    for (clients, fraction, poll), runs in groups.items():
        plain = [steady(r["plain"]["seconds"]) for r in runs]
        flower = [steady(r["flower"]["seconds"]) for r in runs]
        ratios = [f / p for f, p in zip(flower, plain)]
        out.append({"clients": clients, "fraction": fraction, "sampled": runs[0]["sampled"], "poll": poll,
                    "repeats": len(runs), "plain_s_per_round": statistics.median(plain),
                    "flower_s_per_round": statistics.median(flower), "ratio": statistics.median(ratios),
                    "ratios": ratios, "plain_accuracy": runs[-1]["plain"]["accuracy"][-1],
                    "flower_accuracy": runs[-1]["flower"]["accuracy"][-1]})
    return out


def mib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}"


def report(rows: list[dict], rounds: int) -> list[str]:
    lines = [f"{'clients':>7} {'frac':>5} {'per round':>9} {'poll':>6} {'rep':>3} | {'plain s/round':>13} {'flower s/round':>14} "
             f"{'ratio':>6} | {'plain start s':>13} {'flower start s':>14} | {'acc plain':>9} "
             f"{'acc flower':>10} | {'RSS MiB: plain':>14} {'server':>6} {'clients (each)':>18} {'other':>6}"]
    for r in rows:
        p, f = r["plain"], r["flower"]
        ps, fs = steady(p["seconds"]), steady(f["seconds"])
        mem = f["memory"]
        clients = mem["client"]
        each = (f"{len(clients)} x {mib(min(clients))}-{mib(max(clients))}" if clients else "-")
        lines.append(
            f"{r['clients']:>7} {r['fraction']:>5g} {r['sampled']:>9} {r.get('poll') or '-':>6} {r.get('repeat', 1):>3} | "
            f"{ps:13.3f} "
            f"{fs:14.3f} {fs / ps:5.2f}x | {p['wall'] - rounds * ps:13.1f} {f['wall'] - rounds * fs:14.1f} | "
            f"{p['accuracy'][-1]:9.4f} {f['accuracy'][-1]:10.4f} | {mib(p['peak_rss']):>14} "
            f"{mib(max(mem['server'])) if mem['server'] else '-':>6} {each:>18} "
            f"{mib(sum(mem['other'])) if mem['other'] else '-':>6}")
    return lines


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--plain-worker":
        print(json.dumps(plain_worker(json.loads(sys.argv[2]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES,
                    help=f"comma-separated CLIENTS:FRACTION federations (default {DEFAULT_SIZES})")
    ap.add_argument("--rounds", type=int, default=5, help="server rounds per run (default 5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="plain and Flower runs of each size, alternating; the ratio is the median (default 1)")
    ap.add_argument("--plain-threads", type=int, default=1,
                    help="torch threads of the plain process (default 1, as each Flower client: "
                         "Ray gives a 1-CPU actor OMP_NUM_THREADS=1; 0: torch's default)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per Flower run")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for the Flower runs' outputs (default: a temporary folder)")
    ap.add_argument("--flower-poll", dest="flower_poll", default=None,
                    help="comma-separated FL_DEFENSE_FLOWER_POLL values, a Flower run each (off: Flower's own "
                         "0.1 s; SECONDS: the interval); default: the environment's (unset: 5 ms)")
    args = ap.parse_args(argv)
    try:
        sizes = parse_sizes(args.sizes)
        if args.rounds < 2:
            raise ValueError(f"--rounds must be >= 2 (round 1 holds the start-up); got {args.rounds}")
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1; got {args.repeats}")
        polls = parse_polls(args.flower_poll)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_root = (args.out or Path(tempfile.mkdtemp(prefix="bench-federation-"))).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for num_clients, fraction in sizes:
        k = num_fit_clients(num_clients, fraction)
        print(f"# {num_clients} clients, fraction-fit {fraction:g} ({k} per round), "
              f"{args.rounds} rounds ...", flush=True)
        for repeat in range(1, args.repeats + 1):
            tag = f" (repeat {repeat} of {args.repeats})" if args.repeats > 1 else ""
            plain = run_plain(num_clients, fraction, args.rounds, args.seed, args.plain_threads)
            print(f"  plain{tag}: {plain['wall']:.1f} s, rounds " + " ".join(f"{s:.2f}" for s in plain["seconds"])
                  + f" (torch threads {plain['threads']}, {plain['device']})", flush=True)
            for poll in polls:
                flower = run_flower(num_clients, fraction, args.rounds, args.seed,
                                    out_root / f"repeat-{repeat}" if args.repeats > 1 else out_root, args.timeout, poll)
                print(f"  flower{'' if poll is None else f' (poll {poll})'}{tag}: {flower['wall']:.1f} s, rounds "
                      + " ".join(f"{s:.2f}" for s in flower["seconds"])
                      + f", clients ok per round {flower['clients_ok']}", flush=True)
                rows.append({"clients": num_clients, "fraction": fraction, "sampled": k, "poll": poll,
                             "repeat": repeat, "plain": plain, "flower": flower})
    print(f"\n# per-round time: median of rounds 2..{args.rounds}; start: wall - {args.rounds} x "
          f"that; RSS: peak resident memory (VmHWM); outputs under {out_root}")
    print("\n".join(report(rows, args.rounds)))
    if args.repeats > 1:
        for r in summarise(rows):
            print(f"{r['clients']} clients, poll {r['poll'] or '-'}: median ratio {r['ratio']:.2f}x over "
                  f"{r['repeats']} repeats (each: " + ", ".join(f"{x:.2f}x" for x in r["ratios"]) + ")")
    write_results(out_root, rows, args.rounds, argv)
    print(f"wrote {out_root / 'bench_federation.json'}")
    return 0


def write_results(out: Path, rows: list[dict], rounds: int, argv: list[str] | None) -> None:
    """``bench_federation.json`` (a row per federation and polling interval, see
    :func:`summarise`) and ``meta.json``
    (the command and the date) in ``out``, for the documentation's speed results."""
    from experiments.common import write_meta
    from fl_defense.flower_engine import DEFAULT_INTERVAL, ENV
    from fl_defense.io import write_json

    default_poll = os.environ.get(ENV) or str(DEFAULT_INTERVAL)
    table = [{**r, "poll": r["poll"] or default_poll, "rounds": rounds} for r in summarise(rows)]
    write_json(out / "bench_federation.json", {"rows": table})
    write_meta(out, argv, program="python -m benchmarks.bench_federation")


if __name__ == "__main__":
    raise SystemExit(main())
