#!/usr/bin/env python
"""SecAgg+ against the same run without it: final accuracy and run time, side by side.

Real Flower simulations (``flwr run`` through :mod:`experiments.launcher`), alternating
plain and SecAgg+ runs ``--repeats`` times so that a change in the machine's load hits both
alike.  Prints one line per run and a table: final accuracy (and the difference in points),
the whole run's seconds, round 1's seconds (Ray and the clients start in it) and the median
seconds of rounds 2..R.

    python -m benchmarks.secagg_cost --out /tmp/secagg --repeats 2
    python -m benchmarks.secagg_cost --out /tmp/secagg4 --clients 4 --set local-steps=1 --set batch-size=1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


from experiments.setting import parse_sets
from experiments.launcher import run_simulation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="any config key, for both runs")
    args = ap.parse_args(argv)
    base = {"num-server-rounds": args.rounds, "num-clients": args.clients}
    base.update(parse_sets(args.sets))
    runs = {False: [], True: []}
    for rep in range(args.repeats):
        for secagg in (False, True):
            name = f"{'secagg' if secagg else 'plain'}-{rep}"
            res = run_simulation({**base, "secure-aggregation": secagg, "out-dir": str((args.out / name).resolve())})
            secs = [r["seconds"] for r in res.rows]
            runs[secagg].append((res.rows[-1]["accuracy"], res.seconds, secs[0],
                                 statistics.median(secs[1:]) if len(secs) > 1 else float("nan")))
            print(f"{name:>9}: final accuracy {res.rows[-1]['accuracy']:.4f}, {res.seconds:.1f}s "
                  f"(round 1 {secs[0]:.1f}s, later rounds median {runs[secagg][-1][3]:.2f}s)", flush=True)
    print()
    print(f"| {args.clients} clients, {args.rounds} rounds | final accuracy | run (s) | round 1 (s) "
          "| rounds 2.. median (s) |")
    print("|---|---|---|---|---|")
    for secagg in (False, True):
        for i, (acc, total, first, later) in enumerate(runs[secagg]):
            diff = "" if not secagg else f" ({(acc - runs[False][i][0]) * 100:+.1f} pts)"
            print(f"| {'SecAgg+' if secagg else 'plain'} #{i + 1} | {acc:.4f}{diff} | {total:.1f} | {first:.1f} "
                  f"| {later:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
