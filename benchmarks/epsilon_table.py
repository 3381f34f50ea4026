#!/usr/bin/env python
"""The (epsilon, delta) of the Gaussian mechanism the runs report (``fl_defense.privacy``):
exact (composition by the GDP identity, dp-accounting's analytic Gaussian profile) and
through Flower's RDP accountant, for a grid of noise multipliers Z and rounds.

    python -m benchmarks.epsilon_table --delta 1e-5 --z 0.5,1,2,5 --rounds 1,10,20,100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from fl_defense.privacy import NEIGHBOURING, gaussian_epsilon, gaussian_epsilon_rdp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--z", default="0.5,1,2,5")
    ap.add_argument("--rounds", default="1,10,20,100")
    ap.add_argument("--neighbouring", default="add-or-remove-one", choices=NEIGHBOURING)
    args = ap.parse_args(argv)
    zs = [float(z) for z in args.z.split(",")]
    rounds = [int(r) for r in args.rounds.split(",")]
    print(f"epsilon at delta = {args.delta:g}, {args.neighbouring}; each cell: exact / Flower's RDP")
    print()
    print("| Z | " + " | ".join(f"{r} round{'s' if r > 1 else ''}" for r in rounds) + " |")
    print("|---|" + "---|" * len(rounds))
    for z in zs:
        cells = [f"{gaussian_epsilon(z, r, args.delta, args.neighbouring):.3g} / "
                 f"{gaussian_epsilon_rdp(z, r, args.delta, args.neighbouring):.3g}" for r in rounds]
        print(f"| {z:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
