"""Profile the batched iDLG engine: where an attack's time goes.

Runs :func:`attacks.inversion.invert_gradients` once on the targets of
``benchmarks/bench_attack.py`` (same model, same config) and prints

* the **sections** of the engine's iterations, in CPU seconds of this thread: the loss and
  gradient evaluation (``Problem.batched``), the L-BFGS direction and memory update
  (``LBFGSMemory.direction`` / ``push``) and the rest of the loop (step, bookkeeping, stopping
  rules); with the number of batch iterations and how many targets each one held (as
  targets finish the batch shrinks, and a small batch pays the fixed cost of an iteration
  for few targets);
* with ``--ops N``, the ``N`` operators with the most self CPU time (``torch.profiler``).

    python -m benchmarks.profile_attack --kind faces --n 8
    python -m benchmarks.profile_attack --kind mnist --n 16 --grad-impl vmap --ops 12
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch


import attacks.engines as engines
import attacks.lbfgs as lbfgs
from attacks.gradients import single_image_gradients
from attacks.inversion import AttackConfig, invert_gradients
from attacks.settings import GRAD_IMPLS
from benchmarks.bench_attack import KINDS, load_targets
from fl_defense.models import LeNet


class SectionTimer:
    """Wraps methods so that each call adds its thread CPU time to a named section."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self.batch_sizes: collections.Counter = collections.Counter()
        self._saved: list[tuple[type, str, object]] = []

    def wrap(self, cls: type, name: str, section: str, sizes: bool = False) -> None:
        orig = getattr(cls, name)
        self._saved.append((cls, name, orig))

        def timed(obj, *args, **kwargs):
            if sizes:
                self.batch_sizes[int(args[0].shape[0])] += 1
            start = time.thread_time()
            try:
                return orig(obj, *args, **kwargs)
            finally:
                self.seconds[section] += time.thread_time() - start
                self.calls[section] += 1

        setattr(cls, name, timed)

    def restore(self) -> None:
        for cls, name, orig in reversed(self._saved):
            setattr(cls, name, orig)
        self._saved.clear()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=tuple(KINDS), default="mnist")
    ap.add_argument("--n", type=int, default=None, help="targets (default: bench_attack's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-impl", choices=GRAD_IMPLS, default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ops", type=int, default=0, help="also print the top operators (torch.profiler)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or KINDS[args.kind]
    x, y = load_targets(args.kind, n, args.seed)
    c, h, w = x.shape[1:]
    torch.manual_seed(args.seed)
    model = LeNet(c, h, 10, dlg_init=True)
    observed = single_image_gradients(model, x, y)
    cfg = AttackConfig(seed=args.seed, device="cpu", grad_impl=args.grad_impl)

    timer = SectionTimer()
    timer.wrap(engines.Problem, "batched", "evaluation", sizes=True)
    timer.wrap(lbfgs.LBFGSMemory, "direction", "L-BFGS direction")
    timer.wrap(lbfgs.LBFGSMemory, "push", "L-BFGS push")
    start = time.thread_time()
    try:
        res = invert_gradients(model, observed, (c, h, w), 10, cfg)
    finally:
        timer.restore()
    total = time.thread_time() - start
    its = timer.calls["evaluation"]
    print(f"# {n} {args.kind} {tuple(x.shape[1:])}, batched engine, grad_impl={args.grad_impl}, "
          f"threads={args.threads}: {total:.2f} CPU s ({res.seconds:.2f} s wall), {its} batch "
          f"iterations, {int(res.iterations.sum())} target iterations")
    rest = total - sum(timer.seconds.values())
    for name, sec in [*timer.seconds.most_common(), ("rest of the loop", rest)]:
        print(f"{name:<18} {sec:7.2f} s  {100 * sec / total:5.1f}%  {1e3 * sec / max(its, 1):7.2f} ms/iteration")
    hist = sorted(timer.batch_sizes.items())
    print("targets per batch iteration: " + ", ".join(f"{u}: {k}" for u, k in hist))
    if args.ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            invert_gradients(model, observed, (c, h, w), 10, cfg)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.ops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
