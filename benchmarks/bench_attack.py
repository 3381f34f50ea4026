"""Benchmark: the vectorised gradient-inversion engine against the one-at-a-time loop.

Runs, in one process and on the same targets, iDLG with ``engine="batched"`` (all
targets in one vmapped batch, batched L-BFGS) and with ``engine="loop"`` (one
``torch.optim.LBFGS`` per target, the papers' way), with the same iteration budget,
stopping rule, restarts and initial points, against the single-image gradients of a
fresh DLG LeNet (``torch.manual_seed(seed)``, ``dlg_init=True``).  Prints attacks per
minute (wall clock), CPU seconds, success rate (SSIM >= 0.9), label accuracy, and the
ratio batched / loop.  With ``--repeat R`` the engines run R times, interleaved, and each
one's fastest run counts (the attacks are deterministic; only the timing varies).

    python benchmarks/bench_attack.py --n 16 --dataset mnist
    python benchmarks/bench_attack.py --n 8 --dataset colour --grid out/colour.png
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.gradients import single_image_gradients  # noqa: E402
from attacks.inversion import AttackConfig, invert_gradients  # noqa: E402
from attacks.targets import colour_targets, mnist_targets  # noqa: E402
from fl_defense.metrics import per_image, ssim  # noqa: E402
from fl_defense.models import LeNet  # noqa: E402

SUCCESS_SSIM = 0.9


def load_targets(dataset: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset == "mnist":
        return mnist_targets(n, seed=seed)
    if dataset == "colour":
        return colour_targets(n, size=32, seed=seed)
    raise ValueError(f"unknown dataset {dataset!r}; choose mnist or colour")


def save_grid(path: Path, truths: np.ndarray, recons: np.ndarray, ssims: np.ndarray) -> None:
    """Truths (top row) over reconstructions (bottom row), SSIM under each column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    n = len(truths)
    grid = make_grid(torch.tensor(np.concatenate([truths, recons])), nrow=n, padding=2,
                     pad_value=1.0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * n), 2.3))
    ax.imshow(grid.permute(1, 2, 0).numpy().clip(0, 1), interpolation="nearest")
    side = truths.shape[-1] + 2
    ax.set_xticks([side * i + side / 2 for i in range(n)], [f"{s:.2f}" for s in ssims], fontsize=7)
    ax.set_yticks([side / 2, side * 1.5], ["truth", "recon"])
    ax.set_xlabel("SSIM")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="number of target images")
    ap.add_argument("--dataset", choices=("mnist", "colour"), default="mnist")
    ap.add_argument("--seed", type=int, default=0, help="seed of the targets, model and inits")
    ap.add_argument("--max-iter", type=int, default=AttackConfig.max_iter)
    ap.add_argument("--restarts", type=int, default=AttackConfig.restarts)
    ap.add_argument("--tol", type=float, default=AttackConfig.tol)
    ap.add_argument("--method", choices=("idlg", "dlg"), default="idlg")
    ap.add_argument("--engines", default="batched,loop",
                    help="comma-separated engines to run, in this order (batched, loop, joint)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: one core for each engine; 0 keeps "
                         "torch's default, which on a busy machine slows the loop's tiny ops)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the engines this many times, interleaved, and keep each one's "
                         "fastest time (timing noise on a shared machine only adds time)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--grid", type=Path, default=None,
                    help="write a PNG of truths and the first engine's reconstructions")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    x, y = load_targets(args.dataset, args.n, args.seed)
    c, h, w = x.shape[1:]
    torch.manual_seed(args.seed)
    model = LeNet(c, h, 10, dlg_init=True).to(args.device)
    observed = single_image_gradients(model, x, y, device=args.device)
    base = AttackConfig(method=args.method, max_iter=args.max_iter, restarts=args.restarts,
                        tol=args.tol, seed=args.seed, device=args.device)
    print(f"# {args.n} {args.dataset} targets {tuple(x.shape[1:])}, LeNet(dlg_init), {args.method}, "
          f"max_iter={base.max_iter} restarts={base.restarts} tol={base.tol:g} "
          f"threads={torch.get_num_threads()} device={args.device}")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    results: dict[str, dict] = {}
    for _ in range(args.repeat):  # interleaved repeats; the fastest run of each engine counts
        for engine in engines:
            cfg = replace(base, engine=engine)
            cpu0 = time.process_time()
            res = invert_gradients(model, observed, (c, h, w), 10, cfg)
            cpu = time.process_time() - cpu0
            if engine in results:
                results[engine]["seconds"] = min(results[engine]["seconds"], res.seconds)
                results[engine]["cpu"] = min(results[engine]["cpu"], cpu)
                continue
            s = per_image(ssim, x.numpy(), res.images)
            results[engine] = {
                "engine": engine, "seconds": res.seconds, "cpu": cpu,
                "success": float(np.mean(s >= SUCCESS_SSIM)),
                "labels": float(np.mean(res.labels == y.numpy())),
                "ssim": float(np.mean(s)), "failed": int(res.failed.sum()),
                "iters": int(res.iterations.sum()), "ssims": s, "images": res.images,
            }
    for r in results.values():
        r["per_min"] = 60.0 * args.n / r["seconds"]
    print(f"{'engine':<8} {'seconds':>8} {'cpu s':>8} {'attacks/min':>12} {'success':>8} "
          f"{'labels':>7} {'mean SSIM':>10} {'failed':>7} {'iterations':>11}")
    for r in results.values():
        print(f"{r['engine']:<8} {r['seconds']:8.1f} {r['cpu']:8.1f} {r['per_min']:12.1f} "
              f"{r['success']:8.2f} {r['labels']:7.2f} {r['ssim']:10.3f} {r['failed']:7d} {r['iters']:11d}")
    if "batched" in results and "loop" in results:
        b, lp = results["batched"], results["loop"]
        print(f"ratio batched/loop: attacks/min x{b['per_min'] / lp['per_min']:.2f} "
              f"(cpu x{lp['cpu'] / b['cpu']:.2f}); success {b['success']:.2f} vs {lp['success']:.2f}")
    if args.grid is not None and results:
        first = results[engines[0]]
        save_grid(args.grid, x.numpy(), first["images"], first["ssims"])
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
