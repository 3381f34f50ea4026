"""What does a reconstruction at a given (brightness-adjusted) SSIM look like?

Produces reconstructions of real MNIST digits and 32x32 colour crops over the whole SSIM
range and draws a grid: one row per SSIM-adjusted bin (0.0-0.1, ..., 0.9-1.0), each example
shown as truth | raw reconstruction | brightness-adjusted reconstruction.  The
reconstructions come from three sources, all iDLG against a fresh DLG LeNet:

* intermediate results: the attack stopped after k L-BFGS iterations;
* noised gradients: Gaussian noise of standard deviation ``sigma * rms(g)`` added to each
  parameter's gradient (the noising defense), full attack;
* masked gradients: a random fraction of the gradient's coordinates set to zero (the
  masking defense), full attack with the plain L2 objective.

Use it to choose the leak threshold of ``ssim_adjusted``:

    python benchmarks/ssim_levels.py --ssim-grid out/ssim_levels.png
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.gradients import single_image_gradients  # noqa: E402
from attacks.inversion import AttackConfig, invert_gradients  # noqa: E402
from attacks.targets import colour_targets, mnist_targets  # noqa: E402
from fl_defense.metrics import adjust_brightness, ssim, ssim_adjusted  # noqa: E402
from fl_defense.models import LeNet  # noqa: E402

BINS = np.linspace(0.0, 1.0, 11)


@dataclass
class Example:
    truth: np.ndarray
    recon: np.ndarray
    ssim: float
    ssim_adj: float
    source: str


def _attack(model, observed, shape, cfg) -> np.ndarray:
    return invert_gradients(model, observed, shape, 10, cfg).images


def _collect(x: torch.Tensor, y: torch.Tensor, iterates: list[int], max_iter: int,
             seed: int) -> list[Example]:
    c, h, w = x.shape[1:]
    torch.manual_seed(seed)
    model = LeNet(c, h, 10, dlg_init=True)
    obs = single_image_gradients(model, x, y)
    base = AttackConfig(max_iter=max_iter, restarts=0, seed=seed)
    runs: list[tuple[str, np.ndarray]] = []
    for k in iterates:  # the same trajectory, cut after k iterations
        runs.append((f"iter {k}", _attack(model, obs, (c, h, w),
                                          AttackConfig(max_iter=k, restarts=0, tol=1e-30, seed=seed,
                                                       patience=10**6))))
    gen = torch.Generator().manual_seed(seed)
    for sigma in (0.03, 0.1, 0.3, 1.0):
        noisy = []
        for o in obs:
            rms = o.flatten(1).pow(2).mean(1).sqrt().view(-1, *([1] * (o.ndim - 1)))
            noisy.append(o + sigma * rms * torch.randn(o.shape, generator=gen))
        runs.append((f"noise {sigma}", _attack(model, noisy, (c, h, w), base)))
    for keep in (0.5, 0.2, 0.05):
        masked = [o * (torch.rand(o.shape, generator=gen) < keep) for o in obs]
        runs.append((f"mask {keep}", _attack(model, masked, (c, h, w), base)))
    out = []
    for source, images in runs:
        for truth, recon in zip(x.numpy(), images):
            out.append(Example(truth, recon, ssim(truth, recon), ssim_adjusted(truth, recon), source))
    return out


def _to_rgb32(img: np.ndarray) -> torch.Tensor:
    t = torch.tensor(img, dtype=torch.float32)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    pad = 32 - t.shape[-1]
    if pad > 0:
        t = torch.nn.functional.pad(t, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return t


def draw(examples: list[Example], path: Path, per_bin: int, seed: int) -> list[int]:
    """Draw the grid; returns the number of examples available in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    rng = np.random.default_rng(seed)
    adj = np.array([e.ssim_adj for e in examples])
    counts, rows, labels = [], [], []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        idx = np.flatnonzero((adj >= lo) & ((adj < hi) if hi < 1.0 else (adj <= hi)))
        counts.append(len(idx))
        grey = [i for i in idx if examples[i].truth.shape[0] == 1]
        colour = [i for i in idx if examples[i].truth.shape[0] == 3]
        rng.shuffle(grey)
        rng.shuffle(colour)
        n_colour = min(len(colour), per_bin // 2)
        chosen = list(colour[:n_colour]) + list(grey[:per_bin - n_colour])
        chosen += [i for i in colour[n_colour:] if len(chosen) < per_bin]
        tiles = []
        for i in chosen:
            e = examples[i]
            tiles += [_to_rgb32(e.truth), _to_rgb32(e.recon),
                      _to_rgb32(adjust_brightness(e.truth, e.recon))]
        tiles += [torch.ones(3, 32, 32)] * (3 * per_bin - len(tiles))
        rows.append(make_grid(torch.stack(tiles), nrow=3 * per_bin, padding=2, pad_value=1.0))
        labels.append(f"{lo:.1f}-{hi:.1f}\n(n={len(idx)})\n"
                      + " ".join(f"{examples[i].ssim_adj:.2f}" for i in chosen[:3]))
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.25 * per_bin * 3 * 0.45 + 1.5, 0.75 * len(rows) + 0.6))
    for ax, row, label in zip(axes, reversed(rows), reversed(labels)):
        ax.imshow(row.permute(1, 2, 0).numpy().clip(0, 1), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label.split("\n")[0], rotation=0, ha="right", va="center", fontsize=8)
    axes[0].set_title("rows: SSIM-adjusted bin;  each example: truth | reconstruction | "
                      "brightness-adjusted", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssim-grid", type=Path, required=True, help="PNG to write")
    ap.add_argument("--n-mnist", type=int, default=8)
    ap.add_argument("--n-colour", type=int, default=4)
    ap.add_argument("--per-bin", type=int, default=6, help="examples per SSIM bin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    examples: list[Example] = []
    if args.n_mnist > 0:
        x, y = mnist_targets(args.n_mnist, seed=args.seed)
        examples += _collect(x, y, [1, 2, 4, 6, 10, 15, 20, 30, 40, 60, 80, 120],
                             max_iter=400, seed=args.seed)
    if args.n_colour > 0:
        x, y = colour_targets(args.n_colour, size=32, seed=args.seed)
        examples += _collect(x, y, [5, 20, 50, 100, 150, 250, 400, 600, 900],
                             max_iter=800, seed=args.seed)
    counts = draw(examples, args.ssim_grid, args.per_bin, args.seed)
    print(f"{len(examples)} reconstructions; per SSIM-adjusted bin: "
          + ", ".join(f"{lo:.1f}:{n}" for lo, n in zip(BINS[:-1], counts)))
    print(f"wrote {args.ssim_grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
