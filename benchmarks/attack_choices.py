"""Benchmark: the attack's choices measured on the tuning split, one variant a row.

Every variant is a set of config keys (``NAME=KEY=VALUE,KEY=VALUE``, e.g.
``tv-0.01=attack-tv=0.01``) laid over the base setting (the leak map's: the shared
setting, the attack command's 2,000-iteration budget, ``--set`` keys).  Each attacks the
same ``--n`` images of the data set's **tuning split** (its test split: public images,
which the decoy pool then leaves out), as clients of K steps of B, no defense, labels
inferred (:func:`benchmarks.leak_map.run_cell`), and is scored by both criteria.  The
published tables report on the evaluation split; a choice is made here, on the other one.

Each finished variant is written to ``--out`` as ``variants/<name>.json`` (atomically)
and skipped when the command runs again; at the end ``attack_choices.json`` holds the
command, the date and one row per variant (its keys, identified and paper-criterion counts
with 95% Clopper-Pearson intervals, the counts per label, label accuracy, seconds per client).

    python -m benchmarks.attack_choices --kind faces --out docs/results/attack_choices-faces
    python -m benchmarks.attack_choices --kind digits --n 8 --variant tv-0=attack-tv=0 --out /tmp/choices
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from benchmarks.rows import cached_row, command_line, row_summary

#: The variants measured by default: the base, the total-variation weight, more tries,
#: more patience, and larger budgets of all three (patience, tries and iterations raised
#: together in three steps; and the first step with eight tries).
DEFAULT_VARIANTS = (
    "base=",
    "tv-0=attack-tv=0",
    "tv-0.003=attack-tv=0.003",
    "tv-0.01=attack-tv=0.01",
    "tv-0.03=attack-tv=0.03",
    "restarts-4=attack-restarts=4",
    "patience-300=attack-patience=300",
    "budget-x2=attack-patience=300,attack-restarts=4,attack-max-iter=4000",
    "budget-x3=attack-patience=450,attack-restarts=6,attack-max-iter=6000",
    "budget-x4=attack-patience=600,attack-restarts=8,attack-max-iter=8000",
    "restarts-8=attack-patience=300,attack-restarts=8,attack-max-iter=4000",
)
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=KEY=VALUE,KEY=VALUE`` (``NAME=`` alone: the base) -> ``(name, keys)``;
    ``ValueError`` naming the text when the name or a key is malformed."""
    from experiments.setting import parse_sets

    name, sep, rest = text.partition("=")
    if not sep or not NAME.match(name):
        raise ValueError(f"--variant wants NAME=KEY=VALUE[,KEY=VALUE...] with a name of lower-case letters, "
                         f"digits, '.', '_' or '-'; got {text!r}")
    items = [item for item in rest.split(",") if item.strip()]
    return name, parse_sets(items)


def main(argv=None) -> int:
    from benchmarks.leak_map import KINDS, run_cell
    from fl_defense.io import write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kind", default="faces", help=f"one of {', '.join(KINDS)}")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--n", type=int, default=32, help="at least this many tuning images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key of the base setting, under every variant")
    p.add_argument("--variant", dest="variants", action="append", default=None, metavar="NAME=KEY=VALUE,...",
                   help="a variant (repeatable; default: the base, the TV weight, restarts, patience, budget)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.kind not in KINDS:
            raise ValueError(f"--kind must be one of {', '.join(KINDS)}, got {args.kind!r}")
        if min(args.batch_size, args.local_steps, args.n) < 1:
            raise ValueError("--batch-size, --local-steps and --n must be >= 1")
        from experiments.setting import parse_sets
        from fl_defense.config import parse_run_config

        base = parse_sets(args.sets)
        variants = [parse_variant(v) for v in (args.variants or DEFAULT_VARIANTS)]
        names = [name for name, _ in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ; got {', '.join(names)}")
        for name, keys in variants:
            try:
                parse_run_config({**base, **keys})
            except ValueError as exc:
                raise ValueError(f"variant {name!r}: {exc}") from None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    out = args.out.resolve()
    rows = []
    for name, keys in variants:
        row = cached_row(out / "variants" / f"{name}.json", lambda: {
            "variant": name, "keys": keys, "split": "tuning",
            **run_cell(args.kind, args.batch_size, args.local_steps, args.n, args.seed, {**base, **keys},
                       split="tuning")})
        rows.append(row)
        print(f"{name:>14}: {row_summary(row)}", flush=True)
    write_json(out / "attack_choices.json", {
        "command": command_line("attack_choices", argv),
        "date": time.strftime("%Y-%m-%d"), "kind": args.kind, "B": args.batch_size, "K": args.local_steps,
        "base": base, "rows": rows})
    print(f"wrote {out / 'attack_choices.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
