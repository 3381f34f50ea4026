#!/usr/bin/env python
"""What the honest-but-curious hook recovers under Flower's DP wrappers (and the
``dp-gaussian`` defense), naive and aware attacker.

Real Flower simulations (``flwr run`` through :mod:`experiments.launcher`): every client
uploads, the hook attacks all of them in every round (``attack-clients = num-clients``),
scored one-to-one against the images each trained on.  ``--set`` flags reach every run, so
the same table can be re-made in another setting; the papers' setting is one step on one
image:

    python -m benchmarks.dp_leak --out /tmp/dpleak --clients 4 --set local-steps=1 --set batch-size=1

Prints one line per run and a markdown table: leaked targets (adjusted SSIM >= the leak
threshold), mean adjusted SSIM, label accuracy, the epsilon the run reports and its scope,
and the test accuracy after the last round.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from experiments.setting import parse_sets
from experiments.launcher import run_simulation

SETTINGS = {
    "no DP": {},
    "client-side-fixed-clipping": {"dp-strategy": "client-side-fixed-clipping"},
    "server-side-fixed-clipping": {"dp-strategy": "server-side-fixed-clipping"},
    "dp-gaussian": {"defense": "dp-gaussian:{z}"},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--clip", type=float, default=0.1, help="dp-clip: C of the wrappers and of dp-gaussian")
    ap.add_argument("--z", type=float, default=1.0, help="noise multiplier of the wrappers and of dp-gaussian")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    ap.add_argument("--attackers", default="naive,aware")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="any config key, for every run (e.g. --set local-steps=1)")
    args = ap.parse_args(argv)
    base = {"num-server-rounds": args.rounds, "num-clients": args.clients, "attack-every": 1,
            "attack-clients": args.clients, "dp-clip": args.clip, "dp-noise-multiplier": args.z}
    base.update(parse_sets(args.sets))
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    for name in names:
        if name not in SETTINGS:
            print(f"error: unknown setting {name!r}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
            return 2
    rows = []
    for name in names:
        for attacker in args.attackers.split(","):
            extra = {k: v.format(z=args.z) for k, v in SETTINGS[name].items()}
            folder = f"{name.replace(' ', '-')}-{attacker}"
            res = run_simulation({**base, **extra, "attacker": attacker,
                                  "out-dir": str((args.out / folder).resolve())})
            leaked = sum(r.get("attack_leaked", 0) for r in res.rows)
            targets = sum(r.get("attack_targets", 0) for r in res.rows)
            ssim = [r["attack_ssim_adjusted_mean"] for r in res.rows if "attack_ssim_adjusted_mean" in r]
            labels = [r["attack_label_acc"] for r in res.rows if "attack_label_acc" in r]
            last = res.rows[-1]
            eps = last.get("epsilon")
            row = (name, attacker, res.rows[-1].get("attack_objective", "-"), f"{leaked}/{targets}",
                   f"{sum(ssim) / len(ssim):.3f}" if ssim else "-",
                   f"{sum(labels) / len(labels):.2f}" if labels else "-",
                   "-" if "epsilon_scope" not in last else (f"{eps:.3g}" if eps is not None else "inf"),
                   last.get("epsilon_scope", "-"), f"{last['accuracy']:.4f}")
            rows.append(row)
            print(f"{name} / {attacker}: leaked {row[3]}, adjusted SSIM {row[4]}, epsilon {row[6]} ({row[7]}), "
                  f"{res.seconds:.0f}s", flush=True)
    print()
    print(f"C = {args.clip:g}, Z = {args.z:g}, {args.clients} clients, {args.rounds} round(s); "
          + (" ".join(f"--set {s}" for s in args.sets) or "default setting"))
    print()
    print("| uploads | attacker | objective | leaked | adj. SSIM (mean) | label acc. | epsilon | scope | accuracy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
