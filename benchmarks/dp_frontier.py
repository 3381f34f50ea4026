#!/usr/bin/env python
"""Where the Gaussian mechanism's epsilon sits when the attack stops: ``dp-gaussian:Z`` over
a grid of noise multipliers, single-image updates (the papers' setting, as the sweep), naive
and aware attacker, with the (epsilon, delta) of that one release.

Each target image plays a client that takes one SGD step on it (``run_sim.py attack``'s
engine, :mod:`experiments.single_image`); its update ``-lr g`` is clipped to L2 norm C and
N(0, (Z C)^2) is added per coordinate.  All strengths of one attacker are attacked in one
vectorised call.  Prints a row per Z and the weakest Z (the frontier) at which no target
leaks, with its epsilon after one release and after ``--rounds`` releases.

    python benchmarks/dp_frontier.py --n 8 --clip 1.0 --out /tmp/frontier
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.single_image import attack_images, fresh_lenet  # noqa: E402
from experiments.targets import dataset_targets  # noqa: E402
from fl_defense.config import parse_run_config  # noqa: E402
from fl_defense.io import write_jsonl  # noqa: E402
from fl_defense.privacy import gaussian_epsilon  # noqa: E402

GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8, help="images per strength")
    ap.add_argument("--clip", type=float, default=1.0, help="C (dp-clip)")
    ap.add_argument("--grid", default=",".join(f"{z:g}" for z in GRID), help="noise multipliers Z")
    ap.add_argument("--attackers", default="naive,aware")
    ap.add_argument("--rounds", type=int, default=20, help="also report epsilon after this many releases")
    ap.add_argument("--dataset", default="mnist-embedded")
    ap.add_argument("--max-iter", type=int, default=None, help="attack-max-iter (default: the config's)")
    args = ap.parse_args(argv)
    grid = [float(z) for z in args.grid.split(",")]
    base = {"dp-clip": args.clip, **({"attack-max-iter": args.max_iter} if args.max_iter else {})}
    cfg0 = parse_run_config(base)
    images, labels, _, num_classes = dataset_targets(args.dataset, args.n, cfg0.seed)
    # how far clipping at C scales these updates
    import torch

    from attacks.gradients import single_image_gradients

    model = fresh_lenet(images.shape[1], images.shape[2], num_classes, cfg0.seed)
    grads = single_image_gradients(model, torch.as_tensor(images), torch.as_tensor(labels))
    norms = np.sqrt(sum((cfg0.lr * g.reshape(len(images), -1)).pow(2).sum(1).numpy() for g in grads))
    print(f"{args.n} images of {args.dataset}; update norms ||lr g||: min {norms.min():.3f}, median "
          f"{np.median(norms):.3f}, max {norms.max():.3f}; C = {args.clip:g}", flush=True)
    delta = cfg0.dp_delta
    leaked, ssim = {}, {}
    args.out.mkdir(parents=True, exist_ok=True)
    for attacker in args.attackers.split(","):
        cfg = parse_run_config({**base, "attacker": attacker, "defense": f"dp-gaussian:{grid[0]}"})
        specs = [parse_run_config({**base, "defense": f"dp-gaussian:{z}"}).defense for z in grid for _ in images]
        ids = [i for _ in grid for i in range(len(images))]
        scores, rows = attack_images(np.concatenate([images] * len(grid)), np.concatenate([labels] * len(grid)),
                                     num_classes, specs, cfg, client_ids=ids)
        for row, spec in zip(rows, specs):
            row.update({"z": spec.value, "clip": spec.clip, "attacker": attacker})
        write_jsonl(args.out / f"{attacker}.jsonl", rows)
        for k, z in enumerate(grid):
            part = slice(k * len(images), (k + 1) * len(images))
            leaked[attacker, z] = int(scores.leaked[part].sum())
            ssim[attacker, z] = float(scores.ssim_adjusted[part].mean())
        print(f"{attacker}: " + ", ".join(f"Z={z:g} {leaked[attacker, z]}/{len(images)}" for z in grid), flush=True)
    attackers = args.attackers.split(",")
    print()
    print(f"| Z | noise std Z C | " + " | ".join(f"{a}: leaked (adj. SSIM)" for a in attackers)
          + f" | epsilon, 1 release | epsilon, {args.rounds} releases |")
    print("|---|---|" + "---|" * len(attackers) + "---|---|")
    for z in grid:
        cells = [f"{leaked[a, z]}/{len(images)} ({ssim[a, z]:.2f})" for a in attackers]
        print(f"| {z:g} | {z * args.clip:g} | " + " | ".join(cells)
              + f" | {gaussian_epsilon(z, 1, delta):.4g} | {gaussian_epsilon(z, args.rounds, delta):.4g} |")
    print()
    for a in attackers:
        stopped = [z for z in grid if leaked[a, z] == 0]
        if stopped:
            z = stopped[0]
            print(f"frontier, {a} attacker: Z = {z:g} (noise std {z * args.clip:g}); epsilon at delta {delta:g}: "
                  f"{gaussian_epsilon(z, 1, delta):.4g} after 1 release, "
                  f"{gaussian_epsilon(z, args.rounds, delta):.4g} after {args.rounds}")
        else:
            print(f"frontier, {a} attacker: no Z up to {grid[-1]:g} stopped it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
