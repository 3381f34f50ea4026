#!/usr/bin/env python
"""Byzantine clients: mean vs median aggregation, clean and with f malicious clients.

Real Flower simulations (``flwr run`` through :mod:`experiments.launcher`), side by side in
one invocation; prints the final test accuracy of each and the drop from the clean run.

    python -m benchmarks.byzantine --out /tmp/byz --malicious 2 --modes scaled,sign-flip
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from experiments.launcher import run_simulation


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--malicious", type=int, default=2)
    ap.add_argument("--modes", default="scaled,sign-flip")
    ap.add_argument("--scale", type=float, default=10.0)
    args = ap.parse_args(argv)
    results = {}
    for mode in ["clean", *args.modes.split(",")]:
        for aggregation in ("mean", "median"):
            cfg = {"num-server-rounds": args.rounds, "num-clients": args.clients, "aggregation": aggregation,
                   "out-dir": str((args.out / f"{mode}-{aggregation}").resolve())}
            if mode != "clean":
                cfg.update({"byzantine-clients": args.malicious, "byzantine-mode": mode,
                            "byzantine-scale": args.scale})
            res = run_simulation(cfg)
            acc = res.rows[-1]["accuracy"]
            results[(mode, aggregation)] = acc
            print(f"{mode:>10} {aggregation:>6}: final accuracy {acc:.4f} ({res.seconds:.0f}s)", flush=True)
    print()
    print(f"| clients ({args.malicious} of {args.clients} malicious) | mean | median |")
    print("|---|---|---|")
    for mode in ["clean", *args.modes.split(",")]:
        cells = []
        for aggregation in ("mean", "median"):
            acc = results[(mode, aggregation)]
            delta = acc - results[("clean", aggregation)]
            cells.append(f"{acc:.4f}" + ("" if mode == "clean" else f" ({delta * 100:+.1f} pts)"))
        print(f"| {mode} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
