"""Benchmark: the main job (``python run_sim.py`` with its defaults) alone, and beside copies of
itself.

Runs the main job alone ``--pairs`` times, each time followed by the same job with the hook's
attacks in the ServerApp's process (``--attack-workers 0``), alternately; then ``--copies``
copies at the same time (each in a folder of its own), every one a fresh process exactly as a
user starts it, and as many copies with ``--attack-workers 0``.  Prints each run's wall-clock
seconds and the hook's identified leaks per round (``k/n``), the median time with attack
workers and without (and their ratio), and the slowdown of the copies of each kind: their mean
wall-clock time over the median time alone of that kind, measured in this one invocation on
this machine.  Writes ``main_job.json`` and ``meta.json`` in ``--out`` (the
documentation's speed results render them).

    python -m benchmarks.main_job --out DIR [--copies 2] [--pairs 2] [-- RUN_SIM_FLAGS...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(folder: Path, extra: list[str]) -> tuple[subprocess.Popen, float]:
    """One main job writing to ``folder`` (its output to ``folder.log``), started now."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = open(folder.with_suffix(".log"), "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_sim.py"), "--out", str(folder), *extra],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    log.close()
    return proc, time.perf_counter()


def finish(folder: Path, proc: subprocess.Popen, began: float) -> dict:
    """The run's wall-clock seconds and the hook's leaks per round, once ``proc`` has ended.
    Raises ``RuntimeError`` naming the run's log when it failed."""
    from fl_defense.io import read_jsonl

    rc = proc.wait()
    seconds = time.perf_counter() - began
    if rc != 0:
        raise RuntimeError(f"the main job in {folder} exited with status {rc}; see {folder.with_suffix('.log')}")
    rows = read_jsonl(folder / "metrics.jsonl")
    attacked = [r for r in rows if r.get("attack_images")]
    return {"folder": str(folder), "seconds": seconds, "rounds": len(rows),
            "leaked": [r.get("attack_leaked") for r in attacked],
            "leaked_paper": [r.get("attack_leaked_paper") for r in attacked],
            "images": [r["attack_images"] for r in attacked],
            "attack_seconds": [r.get("attack_seconds") for r in attacked],
            "final_accuracy": rows[-1].get("accuracy") if rows else None}


def describe(name: str, run: dict) -> str:
    leaks = " ".join(f"{k}/{n}" for k, n in zip(run["leaked"], run["images"]))
    return f"{name}: {run['seconds']:.1f} s, {run['rounds']} rounds, hook identified per round {leaks or '-'}"


def side_by_side(out: Path, name: str, copies: int, extra: list[str]) -> list[dict]:
    """``copies`` main jobs started at once (folders ``<name>-1`` ...), each one's result."""
    started = [(out / f"{name}-{i + 1}", *start(out / f"{name}-{i + 1}", extra)) for i in range(copies)]
    runs = [finish(folder, proc, began) for folder, proc, began in started]
    for i, run in enumerate(runs):
        print(describe(f"{name} {i + 1} of {copies}", run), flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs and main_job.json")
    ap.add_argument("--copies", type=int, default=2, help="main jobs run side by side (default 2)")
    ap.add_argument("--pairs", type=int, default=2,
                    help="runs alone, each followed by one with --attack-workers 0 (default 2)")
    ap.add_argument("extra", nargs="*", help="flags for every run_sim.py run (after --)")
    args = ap.parse_args(argv)
    if args.copies < 2:
        print(f"error: --copies must be >= 2, got {args.copies}", file=sys.stderr)
        return 2
    if args.pairs < 1:
        print(f"error: --pairs must be >= 1, got {args.pairs}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: --out {out} is not empty", file=sys.stderr)
        return 2
    pairs = []
    for i in range(args.pairs):
        workers = finish(out / f"alone-{i + 1}", *start(out / f"alone-{i + 1}", args.extra))
        print(describe(f"alone {i + 1}", workers), flush=True)
        serial = finish(out / f"serial-{i + 1}", *start(out / f"serial-{i + 1}", [*args.extra, "--attack-workers", "0"]))
        print(describe(f"alone {i + 1}, --attack-workers 0", serial), flush=True)
        pairs.append({"workers": workers, "serial": serial})
    median_workers = statistics.median(p["workers"]["seconds"] for p in pairs)
    median_serial = statistics.median(p["serial"]["seconds"] for p in pairs)
    print(f"alone, median of {args.pairs}: {median_workers:.1f} s; with --attack-workers 0: {median_serial:.1f} s "
          f"({median_serial / median_workers:.2f}x)", flush=True)
    alone = min((p["workers"] for p in pairs), key=lambda r: abs(r["seconds"] - median_workers))
    copies = side_by_side(out, "copy", args.copies, args.extra)
    serial_copies = side_by_side(out, "serial-copy", args.copies, [*args.extra, "--attack-workers", "0"])
    slowdown = statistics.mean(r["seconds"] for r in copies) / median_workers
    serial_slowdown = statistics.mean(r["seconds"] for r in serial_copies) / median_serial
    others = f"{args.copies - 1} other cop{'y' if args.copies == 2 else 'ies'}"
    print(f"slowdown beside {others}: {slowdown:.2f}x (mean wall-clock time side by side / median alone); "
          f"with --attack-workers 0: {serial_slowdown:.2f}x")
    from experiments.common import write_meta
    from fl_defense.io import write_json

    write_json(out / "main_job.json", {"extra_flags": args.extra, "copies": args.copies, "alone": alone,
                                       "side_by_side": copies, "slowdown": slowdown, "pairs": pairs,
                                       "side_by_side_serial": serial_copies, "slowdown_serial": serial_slowdown,
                                       "median_alone": median_workers, "median_serial": median_serial})
    write_meta(out, argv, program="python -m benchmarks.main_job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
