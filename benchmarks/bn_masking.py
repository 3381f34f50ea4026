#!/usr/bin/env python
"""BatchNorm and masking: naive masking vs BatchNorm-aware masking vs no defense.

Runs real Flower simulations (``flwr run`` through :mod:`experiments.launcher`) of the
BatchNorm CNN on embedded MNIST, side by side in one invocation, and prints the final
test accuracy of each and its difference from no defense.

    python -m benchmarks.bn_masking --out /tmp/bn --rounds 10 --p 0.5
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


from experiments.launcher import run_simulation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--p", type=float, default=0.5, help="masking probability")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--aggregations", default="mean,median")
    args = ap.parse_args(argv)
    cases = [("none", "none")]
    cases += [(f"masking:{args.p}", "masking"), (f"masking-bn:{args.p}", "masking-bn")]
    rows = []
    for aggregation in args.aggregations.split(","):
        for defense, label in cases:
            out = (args.out / f"{aggregation}-{label}").resolve()
            res = run_simulation({"model": "bncnn", "defense": defense, "aggregation": aggregation,
                                  "num-server-rounds": args.rounds, "num-clients": args.clients,
                                  "lr": args.lr, "out-dir": str(out)})
            final = res.rows[-1]
            acc = final.get("accuracy", float("nan"))
            loss = final.get("loss", float("nan"))
            rows.append((aggregation, defense, acc, loss, res.seconds))
            print(f"{aggregation:>7} {defense:>16}  accuracy {acc:.4f}  loss {loss:.4f}  ({res.seconds:.0f}s)",
                  flush=True)
    print()
    print("| aggregation | defense | final accuracy | vs none | test loss |")
    print("|---|---|---|---|---|")
    for aggregation, defense, acc, loss, _ in rows:
        base = next(r[2] for r in rows if r[0] == aggregation and r[1] == "none")
        diff = (acc - base) * 100 if not math.isnan(acc) else float("nan")
        print(f"| {aggregation} | {defense} | {acc:.4f} | {diff:+.1f} pts | {loss:.4g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
