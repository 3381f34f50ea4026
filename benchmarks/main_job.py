"""Benchmark: the main job (``python run_sim.py``) alone, and beside copies of itself, for each
number of attack worker processes asked for.

``--workers`` names the ``--attack-workers`` values to compare (default ``1,0,2``: the
default of ``run_sim.py`` on two cores or more first).  Runs the main job alone ``--pairs``
times for each value, the values alternating (``1, 0, 2, 1, 0, 2, ...``); then, for each value,
``--copies`` copies at the same time (each in a folder of its own).  Every run is a fresh
process exactly as a user starts it.  Prints each run's wall-clock seconds and the hook's
identified leaks per round (``k/n``), and per value the median time alone and the slowdown of
the copies: their mean wall-clock time over that median, measured in this one invocation on
this machine.  Writes ``main_job.json`` and ``meta.json`` in ``--out`` (the documentation's
speed results render them).

    python -m benchmarks.main_job --out DIR [--workers 1,0,2] [--copies 2] [--pairs 2] [-- RUN_SIM_FLAGS...]
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


def worker_counts(text: str) -> list[int]:
    """``"1,0,2"`` -> ``[1, 0, 2]``; raises ``ValueError`` naming the value unless each is a
    distinct ``attack-workers`` value that the run config accepts."""
    from fl_defense.config import ConfigError, parse_run_config

    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--workers {text!r}: want comma-separated worker counts, e.g. 1,0,2") from None
    if len(set(counts)) != len(counts):
        raise ValueError(f"--workers {text!r}: want distinct worker counts")
    for count in counts:
        try:
            parse_run_config({"attack-workers": count})
        except ConfigError as exc:
            raise ValueError(f"--workers {text!r}: {exc}") from None
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the runs and main_job.json")
    ap.add_argument("--workers", default="1,0,2", help="--attack-workers values compared (default 1,0,2)")
    ap.add_argument("--copies", type=int, default=2, help="main jobs run side by side (default 2)")
    ap.add_argument("--pairs", type=int, default=2, help="runs alone of each --workers value (default 2)")
    ap.add_argument("extra", nargs="*", help="flags for every run_sim.py run (after --)")
    args = ap.parse_args(argv)
    try:
        counts = worker_counts(args.workers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    from experiments.run_flags import default_attack_workers

    default = default_attack_workers()
    flags = {w: [*args.extra, "--attack-workers", str(w)] for w in counts}
    alone: dict[int, list[dict]] = {w: [] for w in counts}
    for i in range(args.pairs):
        for w in counts:
            name = f"alone-w{w}-{i + 1}"
            run = finish(out / name, *start(out / name, flags[w]))
            print(describe(f"alone {i + 1}, --attack-workers {w}", run), flush=True)
            alone[w].append(run)
    kinds = []
    for w in counts:
        median = statistics.median(r["seconds"] for r in alone[w])
        copies = side_by_side(out, f"copy-w{w}", args.copies, flags[w])
        kinds.append({"attack_workers": w, "default": w == default, "alone": alone[w], "median_alone": median,
                      "side_by_side": copies,
                      "slowdown": statistics.mean(r["seconds"] for r in copies) / median})
    others = f"{args.copies - 1} other cop{'y' if args.copies == 2 else 'ies'}"
    for k in kinds:
        print(f"--attack-workers {k['attack_workers']}{' (the default here)' if k['default'] else ''}: "
              f"median alone of {args.pairs} {k['median_alone']:.1f} s; beside {others} "
              f"{statistics.mean(r['seconds'] for r in k['side_by_side']):.1f} s, slowdown {k['slowdown']:.2f}x",
              flush=True)
    from experiments.common import write_meta
    from fl_defense.io import write_json

    write_json(out / "main_job.json", {"extra_flags": args.extra, "copies": args.copies, "pairs": args.pairs,
                                       "default_attack_workers": default, "kinds": kinds})
    write_meta(out, argv, program="python -m benchmarks.main_job")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
