"""Benchmark: the vectorised gradient-inversion engine against the papers' one-at-a-time loop.

Runs, in one process, on the same targets, iDLG with ``engine="batched"`` (all targets in
one batch, the hand-written double back-propagation of :mod:`attacks.layerwise`, batched
L-BFGS) and with ``engine="loop"`` (one ``torch.optim.LBFGS`` per target with plain
autograd, the papers' way), with the same iteration budget, stopping rule, restarts and
initial points, against the single-image gradients of a fresh DLG LeNet
(``torch.manual_seed(seed)``, ``dlg_init=True``), on three kinds of images:

* ``mnist``: real MNIST digits at their native 1x28x28 (``mnist-embedded``);
* ``colour``: 3x32x32 colour crops of scikit-image's photographs
  (``colour-embedded``);
* ``faces``: 1x32x32 images of Labeled Faces in the Wild (``lfw-embedded``, faces and non-faces),

all from the data sets' tuning split (their test split).

Each kind runs at every thread count of ``--threads`` (``torch.set_num_threads``).  Prints,
per kind and thread count, attacks per minute (wall clock), CPU seconds, success rate
(SSIM >= 0.9), label accuracy and iterations, then a table of the ratios batched / loop.
With ``--repeat R`` the engines run R times, interleaved, and each one's fastest run counts
(the attacks are deterministic; only the timing varies).  Engine names may carry a
``grad_impl`` (``batched:vmap``: the batched engine on ``torch.func.vmap`` gradients).

    python -m benchmarks.bench_attack                          # 16 digits, 8 colour, 8 faces; 1 and 2 threads
    python -m benchmarks.bench_attack --kinds colour --threads 1 --engines batched,batched:vmap,loop
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


from attacks.gradients import single_image_gradients
from attacks.inversion import AttackConfig, invert_gradients
from attacks.settings import ENGINES, GRAD_IMPLS, resolve_device
from experiments.targets import dataset_targets
from fl_defense.metrics import per_image, ssim
from fl_defense.models import LeNet

SUCCESS_SSIM = 0.9
KINDS = {"mnist": 16, "colour": 8, "faces": 8}  # kind -> default number of targets


DATASET = {"mnist": "mnist-embedded", "colour": "colour-embedded", "faces": "lfw-embedded"}


def load_targets(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of the kind's data set, from its tuning split (the test split)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    t = dataset_targets(DATASET[kind], n, seed, split="tuning")
    return torch.as_tensor(t.images), torch.as_tensor(t.labels)


def parse_engine(spec: str) -> tuple[str, dict]:
    """``"batched"`` -> ("batched", {}); ``"batched:vmap"`` -> ("batched", {"grad_impl": "vmap"})."""
    engine, _, impl = spec.partition(":")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} in {spec!r}; choose from {', '.join(ENGINES)}")
    if impl and impl not in GRAD_IMPLS:
        raise ValueError(f"unknown grad_impl {impl!r} in {spec!r}; choose from {', '.join(GRAD_IMPLS)}")
    return engine, ({"grad_impl": impl} if impl else {})


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


def run_kind(kind: str, n: int, threads: int, engines: list[str], base: AttackConfig,
             repeat: int, seed: int) -> tuple[dict[str, dict], np.ndarray]:
    """All engines on ``n`` targets of ``kind`` at ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    dev = base.device
    x, y = load_targets(kind, n, seed)
    c, h, w = x.shape[1:]
    torch.manual_seed(seed)
    model = LeNet(c, h, 10, dlg_init=True).to(dev)
    observed = single_image_gradients(model, x, y, device=dev)
    results: dict[str, dict] = {}
    for _ in range(repeat):  # interleaved repeats; the fastest run of each engine counts
        for spec in engines:
            engine, extra = parse_engine(spec)
            cfg = replace(base, engine=engine, **extra)
            cpu0 = time.process_time()
            res = invert_gradients(model, observed, (c, h, w), 10, cfg)
            cpu = time.process_time() - cpu0
            if spec in results:
                results[spec]["seconds"] = min(results[spec]["seconds"], res.seconds)
                results[spec]["cpu"] = min(results[spec]["cpu"], cpu)
                continue
            s = per_image(ssim, x.numpy(), res.images)
            results[spec] = {
                "engine": spec, "seconds": res.seconds, "cpu": cpu,
                "success": float(np.mean(s >= SUCCESS_SSIM)),
                "labels": float(np.mean(res.labels == y.numpy())),
                "ssim": float(np.mean(s)), "failed": int(res.failed.sum()),
                "iters": int(res.iterations.sum()), "ssims": s, "images": res.images,
            }
    for r in results.values():
        r["per_min"] = 60.0 * n / r["seconds"]
    return results, x.numpy()


def print_results(kind: str, shape: tuple, n: int, threads: int, results: dict[str, dict]) -> None:
    print(f"\n## {n} {kind} {shape}, threads={threads}")
    print(f"{'engine':<13} {'seconds':>8} {'cpu s':>8} {'attacks/min':>12} {'success':>8} "
          f"{'labels':>7} {'mean SSIM':>10} {'failed':>7} {'iterations':>11}")
    for r in results.values():
        print(f"{r['engine']:<13} {r['seconds']:8.1f} {r['cpu']:8.1f} {r['per_min']:12.1f} "
              f"{r['success']:8.2f} {r['labels']:7.2f} {r['ssim']:10.3f} {r['failed']:7d} "
              f"{r['iters']:11d}")
    sys.stdout.flush()


def ratio_rows(table: list[dict], fast: str, slow: str) -> list[str]:
    """One line per (kind, threads): attacks/min of ``fast`` over ``slow``, and both successes."""
    lines = [f"{'kind':<7} {'shape':<11} {'n':>3} {'threads':>7} {fast + ' s':>11} {slow + ' s':>9} "
             f"{'ratio attacks/min':>18} {'cpu ratio':>9} {'success':>8} {'vs':>5}"]
    for row in table:
        a, b = row["results"].get(fast), row["results"].get(slow)
        if a is None or b is None:
            continue
        shape = "x".join(str(v) for v in row["shape"])
        lines.append(f"{row['kind']:<7} {shape:<11} {row['n']:>3} {row['threads']:>7} "
                     f"{a['seconds']:11.1f} {b['seconds']:9.1f} {a['per_min'] / b['per_min']:17.1f}x "
                     f"{b['cpu'] / a['cpu']:8.1f}x {a['success']:8.2f} {b['success']:5.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help=f"comma-separated kinds of images ({', '.join(KINDS)})")
    ap.add_argument("--n", type=int, default=None,
                    help="targets per kind (default: " + ", ".join(f"{k} {v}" for k, v in KINDS.items())
                         + ")")
    ap.add_argument("--seed", type=int, default=0, help="seed of the targets, model and inits")
    ap.add_argument("--max-iter", type=int, default=AttackConfig.max_iter)
    ap.add_argument("--restarts", type=int, default=AttackConfig.restarts)
    ap.add_argument("--tol", type=float, default=AttackConfig.tol)
    ap.add_argument("--method", choices=("idlg", "dlg"), default="idlg")
    ap.add_argument("--engines", default="batched,loop",
                    help="comma-separated engines to run, in this order (batched, loop, joint; "
                         "ENGINE:vmap for torch.func.vmap gradients)")
    ap.add_argument("--threads", default="1,2",
                    help="comma-separated torch intra-op thread counts to run each kind at")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the engines this many times, interleaved, and keep each one's "
                         "fastest time (timing noise on a shared machine only adds time)")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda")
    ap.add_argument("--grid", type=Path, default=None,
                    help="folder: write KIND.png with truths and the first engine's reconstructions")
    args = ap.parse_args(argv)

    try:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        for k in kinds:
            if k not in KINDS:
                raise ValueError(f"unknown kind {k!r}; choose from {', '.join(KINDS)}")
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        for e in engines:
            parse_engine(e)
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        if not threads or min(threads) < 1:
            raise ValueError(f"--threads must list positive ints; got {args.threads!r}")
        if args.n is not None and args.n < 1:
            raise ValueError(f"--n must be >= 1; got {args.n}")
        device = str(resolve_device(args.device))
        base = AttackConfig(method=args.method, max_iter=args.max_iter, restarts=args.restarts,
                            tol=args.tol, seed=args.seed, device=device)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# LeNet(dlg_init), {args.method}, max_iter={base.max_iter} restarts={base.restarts} "
          f"tol={base.tol:g}; device={device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") else "")
          + f"; engines {', '.join(engines)}; success = SSIM >= {SUCCESS_SSIM}")
    table: list[dict] = []
    for kind in kinds:
        n = args.n if args.n is not None else KINDS[kind]
        for t in threads:
            results, truths = run_kind(kind, n, t, engines, base, args.repeat, args.seed)
            shape = tuple(truths.shape[1:])
            print_results(kind, shape, n, t, results)
            table.append({"kind": kind, "shape": shape, "n": n, "threads": t, "results": results})
            if args.grid is not None and t == threads[0]:
                first = results[engines[0]]
                path = args.grid / f"{kind}.png"
                save_grid(path, truths, first["images"], first["ssims"])
                print(f"wrote {path}")
    if len(engines) >= 2:
        slow = engines[-1]
        for fast in engines[:-1]:
            print(f"\n# ratio {fast} / {slow} (attacks per minute, wall clock; cpu ratio: CPU "
                  f"seconds {slow} / {fast}); success = share with SSIM >= {SUCCESS_SSIM}")
            print("\n".join(ratio_rows(table, fast, slow)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
