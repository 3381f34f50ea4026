"""Benchmark: the leak rate of the multi-step attack over a grid of (batch size B, local steps K).

For every cell, ``--clients`` clients each train K SGD steps of B over N = K * B images (one
epoch, so the batch order needs no assumption) the way ``fit`` does, no defense, the DLG
LeNet, and the server inverts every upload with labels inferred
(:func:`experiments.client_attack.attack_clients`, all clients of a cell in one call).  The
leak rate is the fraction of images whose one-to-one matched reconstruction has a
brightness-adjusted SSIM >= the leak threshold.  Two image sets: real MNIST digits
(``mnist-embedded``) and colour crops (:func:`attacks.targets.colour_targets`, 32x32x3).
Prints one line per cell and writes a heat map PNG (one panel per image set).

    python -m benchmarks.leak_map --batch-sizes 1,2,4 --local-steps 1,2 --clients 2 --out docs/figures/leak_map.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


from attacks.targets import colour_targets
from experiments.client_attack import attack_clients
from experiments.targets import dataset_targets
from fl_defense.config import parse_run_config
from fl_defense.io import save_figure

SETS = ("mnist", "colour")


def images_of(name: str, n: int, seed: int):
    if name == "mnist":
        images, labels, _, nc = dataset_targets("mnist-embedded", n, seed, shuffle=True)
        return images, labels, nc
    x, y = colour_targets(n, size=32, seed=seed)
    return x.numpy(), y.numpy(), 10


def cell(name: str, b: int, k: int, clients: int, max_iter: int | None, seed: int) -> tuple[float, int, float, float]:
    """(leak rate, images, label accuracy, seconds per client) of one cell."""
    values = {"local-steps": k, "batch-size": b, "images-per-client": k * b, "seed": seed}
    if max_iter is not None:
        values["attack-max-iter"] = max_iter
    cfg = parse_run_config(values)
    images, labels, nc = images_of(name, clients * k * b, seed)
    start = time.perf_counter()
    sc, _, _ = attack_clients(cfg, images, labels, nc, device="cpu")
    seconds = (time.perf_counter() - start) / clients
    return float(sc.leaked.mean()), len(sc.leaked), float(np.mean(sc.label_pred == sc.label_true)), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--local-steps", default="1,2")
    p.add_argument("--sets", default="mnist,colour")
    p.add_argument("--clients", type=int, default=2, help="clients per cell (N = K * B images each)")
    p.add_argument("--max-iter", type=int, default=None, help="attack-max-iter (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="docs/figures/leak_map.png")
    args = p.parse_args(argv)
    bs = [int(v) for v in args.batch_sizes.split(",")]
    ks = [int(v) for v in args.local_steps.split(",")]
    sets = args.sets.split(",")
    bad = [s for s in sets if s not in SETS]
    if bad or min(bs + ks) < 1 or args.clients < 1:
        print(f"error: sets must be among {SETS}, batch sizes, local steps and clients >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rates = np.zeros((len(sets), len(ks), len(bs)))
    for si, name in enumerate(sets):
        for ki, k in enumerate(ks):
            for bi, b in enumerate(bs):
                rate, n, lab, sec = cell(name, b, k, args.clients, args.max_iter, args.seed)
                rates[si, ki, bi] = rate
                print(f"{name:>6} B={b} K={k} N={k * b}: leaked {rate:.2f} of {n} images, label accuracy {lab:.2f}, "
                      f"{sec:.1f} s per client", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(3.2 * len(sets) + 0.8, 2.8), squeeze=False)
    for si, name in enumerate(sets):
        ax = axes[0, si]
        im = ax.imshow(rates[si], vmin=0, vmax=1, cmap="viridis", origin="lower")
        ax.set_xticks(range(len(bs)), [str(b) for b in bs])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("batch size B")
        ax.set_ylabel("local steps K (N = K B)")
        ax.set_title(f"{name}: leak rate")
        for ki in range(len(ks)):
            for bi in range(len(bs)):
                ax.text(bi, ki, f"{rates[si, ki, bi]:.2f}", ha="center", va="center",
                        color="white" if rates[si, ki, bi] < 0.5 else "black")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
