"""Experiment 1, ``run_sim.py sweep``: per defense and kind of data, the weakest strength at
which the attack stops leaking -- measured on the updates the federation trains with.

Setting
-------
The sweep takes the federation's setting with the same flags and defaults as a run
(:mod:`experiments.setting`).  Its targets are clients: on a data set, the first clients
of the run's partition of the training split (each trains in round 1 on the images
``images-per-client`` draws for it, exactly as in the run); on an image folder
(``--images DIR``), consecutive groups of ``images-per-client`` files.  Every client's
upload is built by the client's own code path (:func:`fl_defense.task.defended_payload`:
train ``local-steps`` SGD steps of ``batch-size``, payload, defense) from the round-1
global model, so a strength here is in the units of the updates that are trained.  The
attack sees only what the server sees (:mod:`experiments.client_attack`), and every
private image is scored once.

Cells
-----
A grid of independent cells (data set, attacker, defense, strength).  A finished cell is
stored as its own files, written atomically, with its setting; an invocation whose setting
differs from the cells already in the folder is refused, and finished cells are never
recomputed, so an interrupted sweep resumes where it stopped.  Every cell is attacked in
one vectorised call over its clients, so its numbers do not depend on the cells beside it.
The missing strengths of one (data set, attacker, defense) share their targets and decoys
in this process with ``--workers 0``; otherwise every :data:`TASK_STRENGTHS` of them are a
task on Ray (:mod:`experiments.sweep_tasks`) -- on this machine by default, on the cluster
named by ``RAY_ADDRESS`` when it is set -- so that no worker is left with a long group
while the others idle.  The tables and figures (:mod:`experiments.sweep_report`) are rebuilt
from the cells at the end of every invocation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from experiments.common import parse_list, write_meta
from experiments.setting import EXPERIMENT_MAX_ITER, add_setting_flags, attack_setting, defense_as_applied, setting_of
from experiments.sweep_cells import sweep_cell_path
from experiments.sweep_report import summarise_sweep
from fl_defense.config import ATTACK_METHODS, ATTACKERS, ConfigError, ExperimentConfig
from fl_defense.errors import suggest
from fl_defense.io import write_json

#: Strengths a Ray task attacks together: small enough that no worker is left with a long
#: group while the others idle, large enough that a task's set-up (targets, decoys) is a
#: small part of it.
TASK_STRENGTHS = 2


def sweepable() -> tuple[str, ...]:
    """The defenses the sweep can take: every registered one with a default grid."""
    from fl_defense.defenses import DEFENSES

    return DEFENSES.select(lambda d: bool(d.grid))


def default_defenses() -> tuple[str, ...]:
    """The defenses swept (and trained) by default: the registry's ``default_experiment`` ones."""
    from fl_defense.defenses import DEFENSES

    return DEFENSES.select(lambda d: d.default_experiment)


def _parse_grid(text: str | None, defense: str) -> list[float]:
    from fl_defense.defenses import get_defense

    if not text:
        return list(get_defense(defense).grid)
    try:
        return [float(x) for x in parse_list(text, f"--grid-{defense}")]
    except ValueError:
        raise ConfigError(f"--grid-{defense} must be comma-separated numbers, got {text!r}") from None


def _sources(args, cfg: ExperimentConfig) -> dict[str, ExperimentConfig]:
    """Kind of data -> the setting to attack it in (one per data set, one per folder)."""
    from dataclasses import replace

    from fl_defense.datasets import DATASETS, check_dataset_available

    sources: dict[str, ExperimentConfig] = {}
    for name in parse_list(args.datasets, "--datasets") if args.datasets else [cfg.dataset]:
        if name not in DATASETS:
            raise ConfigError(f"unknown dataset {name!r} in --datasets{suggest(name, DATASETS.names())}; choose from "
                              f"{', '.join(DATASETS.names())}")
        check_dataset_available(name, cfg.data_dir or None)
        sources[name] = replace(cfg, dataset=name)
    for folder in args.images or []:
        path = Path(folder).resolve()
        if not path.is_dir():
            raise ConfigError(f"--images folder {path} does not exist")
        sources[f"folder-{path.name}"] = cfg
    return sources


def _grid_dest(defense: str) -> str:
    return "grid_" + defense.replace("-", "_")


def sweep_config(args) -> ExperimentConfig:
    """The validated setting of this sweep: the setting flags, then the attack flags."""
    return attack_setting(args)


def same_as_naive(defense: str, model: str) -> bool:
    """Whether the aware attacker runs exactly the naive attack against ``defense`` (its
    objective is the naive ``l2`` and the model has no BatchNorm statistics to match): its
    cells are then the naive cells, computed once."""
    from experiments.setting import defense_as_applied
    from fl_defense.defenses import get_defense
    from fl_defense.models import has_batchnorm

    return get_defense(defense_as_applied(defense, model)).aware_objective == "l2" and not has_batchnorm(model)


def _copy_as_aware(out: Path, kind: str, defense: str, strength: float) -> None:
    """The naive cell's files as the aware cell's (summary written last), marked ``same_as``."""
    import shutil

    src = sweep_cell_path(out, kind, defense, "naive", strength)
    dst = sweep_cell_path(out, kind, defense, "aware", strength)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".jsonl", ".npz"):
        shutil.copyfile(src.with_suffix(suffix), dst.with_suffix(suffix))
    cell = json.loads(src.read_text())
    write_json(dst, {**cell, "attacker": "aware", "same_as": "naive"})


def _check_resume(out: Path, setting: dict) -> None:
    """Refuse to mix cells of two settings (or starting points, or decoy pools) in one folder."""
    previous = out / "config.json"
    if not previous.exists():
        return
    recorded = json.loads(previous.read_text()).get("setting", {})
    differ = [f"{k}: {recorded.get(k)!r} there, {setting[k]!r} here" for k in setting
              if str(recorded.get(k)) != str(setting[k])]
    if differ:
        raise ConfigError(f"{out} holds a sweep of another setting ({'; '.join(differ)}); use another --out")


def cmd_sweep(args) -> int:
    began = time.perf_counter()  # the command's wall time, its validation and set-up included
    from experiments.sweep_tasks import run_groups
    from fl_defense.defenses import parse_defense

    cfg = sweep_config(args)
    defenses = parse_list(args.defenses, "--defenses")
    attackers = parse_list(args.attackers, "--attackers")
    for a in attackers:
        if a not in ATTACKERS:
            raise ConfigError(f"unknown attacker {a!r} in --attackers; choose {', '.join(ATTACKERS)}")
    grids = {}
    for d in defenses:
        if d not in sweepable():
            raise ConfigError(f"unknown defense {d!r} in --defenses{suggest(d, sweepable())}; choose from "
                              f"{', '.join(sweepable())}")
        grids[d] = _parse_grid(getattr(args, _grid_dest(d), None), d)
        for v in grids[d]:
            parse_defense(f"{defense_as_applied(d, cfg.model)}:{v}")  # validates the range, naming the value
    if not 0 <= args.max_leak_rate < 1:
        raise ConfigError(f"--max-leak-rate must be in [0, 1), got {args.max_leak_rate!r}")
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n!r}")
    if args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk!r}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers!r}")
    sources = _sources(args, cfg)
    folders = {f"folder-{Path(f).resolve().name}": str(Path(f).resolve()) for f in args.images or []}
    checkpoint = str(Path(args.checkpoint).resolve()) if args.checkpoint else ""
    setting = {**setting_of(cfg), "checkpoint": checkpoint, "decoys": args.decoys or ""}
    out = Path(args.out).resolve()
    _check_resume(out, setting)
    # targets and pools first: a bad image file or checkpoint stops the sweep here, before anything is written
    from experiments.sweep_tasks import load_targets, sweep_pool, sweep_start

    _, first_round = sweep_start(cfg, checkpoint or None)
    for kind, kcfg in sources.items():
        found = load_targets(kcfg, args.n, folders.get(kind), args.image_size, first_round)
        pool = sweep_pool(kcfg, folders.get(kind), args.decoys, found.clients[0].images.shape)
        print(f"{kind}: {sum(min(len(c.labels), kcfg.images_per_client) for c in found.clients)} images a cell "
              f"({len(found.clients)} clients); decoys: "
              + (pool.source if pool is not None else "none (give --decoys DIR; the identification criterion is off)"),
              flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "sweep", "setting": setting, "kinds": list(sources),
                                     "folders": folders, "defenses": defenses, "attackers": attackers,
                                     "grids": grids, "n": args.n, "max_leak_rate": args.max_leak_rate,
                                     "chunk": args.chunk, "preset": args.setting, "config": cfg.to_run_config()})
    groups, copies = [], []
    total = done = 0
    for kind in sources:
        for attacker in attackers:
            for defense in ["none", *defenses]:
                strengths = [0.0] if defense == "none" else grids[defense]
                todo = [s for s in strengths if not sweep_cell_path(out, kind, defense, attacker, s).exists()]
                total += len(strengths)
                done += len(strengths) - len(todo)
                if attacker == "aware" and "naive" in attackers and same_as_naive(defense, cfg.model):
                    copies += [(kind, defense, s) for s in todo]
                elif todo:
                    # as Ray tasks, TASK_STRENGTHS strengths a task: the cores stay busy to the end
                    size = TASK_STRENGTHS if args.workers > 0 else len(todo)
                    pieces = [todo[i:i + size] for i in range(0, len(todo), size)]
                    groups += [{"kind": kind, "attacker": attacker, "defense": defense, "strengths": piece}
                               for piece in pieces]
    print(f"sweep: {total} cells ({done} already done, {len(copies)} the same attack as the naive one) x {args.n} "
          f"images, {len(groups)} task(s); setting "
          + " ".join(f"{k}={v}" for k, v in {**setting, "dataset": ",".join(sources)}.items() if v != "")
          + f"; output {out}", flush=True)
    run_groups(groups, {k: c.to_run_config() for k, c in sources.items()}, folders, out, args,
               workers=args.workers, quiet=args.quiet)
    for kind, defense, strength in copies:
        _copy_as_aware(out, kind, defense, strength)
    summarise_sweep(out, list(sources), defenses, attackers, grids, args.max_leak_rate, cfg.leak_threshold)
    seconds = time.perf_counter() - began
    write_meta(out, seconds=seconds)
    print(f"sweep done in {seconds:.0f}s (this invocation); wrote "
          f"{out / 'thresholds.csv'}, thresholds.md, cells.csv, leak_vs_strength.png, grids/")
    print((out / "thresholds.md").read_text())
    return 0


def register(sub) -> None:
    d = ExperimentConfig()
    p = sub.add_parser("sweep", help="experiment 1: the minimum strength at which each defense stops the attack")
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", help="comma-separated data sets (default: the setting's --dataset)")
    p.add_argument("--images", action="append", metavar="DIR",
                   help="a folder of PNG/JPEG files to sweep too (repeatable); groups of images-per-client "
                        "files play clients")
    p.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="resize --images files to this size (default: their own size, which must agree)")
    p.add_argument("--defenses", default=",".join(default_defenses()),
                   help=f"comma-separated defenses, of {', '.join(sweepable())} (default: %(default)s)")
    p.add_argument("--attackers", default="naive,aware", help="comma-separated: naive, aware")
    p.add_argument("--n", type=int, default=64, help="private images attacked per cell (default 64)")
    p.add_argument("--decoys", default=None, metavar="DIR",
                   help="a folder of public images (the decoy pool); default: each data set's test split (none for "
                        "--images); 'none': the identification criterion off")
    p.add_argument("--decoy-pool-size", dest="decoy_pool_size", type=int, default=d.decoy_pool_size,
                   help=f"the most test-split images in the pool (default {d.decoy_pool_size})")
    p.add_argument("--checkpoint", metavar="RUN_DIR",
                   help="attack uploads made from the global model of a run's checkpoint (RUN_DIR/checkpoint.npz) "
                        "in the rounds after it, instead of the run's initial model")
    p.add_argument("--max-leak-rate", dest="max_leak_rate", type=float, default=0.0,
                   help="a defense's threshold is the weakest strength whose leak rate is at most this")
    from fl_defense.defenses import get_defense

    for name in sweepable():
        p.add_argument(f"--grid-{name}", dest=_grid_dest(name), metavar="S1,S2,...",
                       help=f"strengths of {name}, weakest first (default {','.join(f'{v:g}' for v in get_defense(name).grid)})")
    a = p.add_argument_group("the attack")
    a.add_argument("--method", default=d.attack_method, choices=ATTACK_METHODS)
    a.add_argument("--max-iter", dest="max_iter", type=int, default=d.attack_max_iter,
                   help=f"L-BFGS iterations per try (default: the hook's attack-max-iter, {d.attack_max_iter}, "
                        f"so that a threshold holds against the attacker the runs log; the attack "
                        f"command's default is {EXPERIMENT_MAX_ITER})")
    a.add_argument("--restarts", type=int, default=None,
                   help=f"tries after the first (default: attack-restarts, {d.attack_restarts}, the hook's)")
    a.add_argument("--leak-threshold", dest="leak_threshold", type=float, default=d.leak_threshold)
    a.add_argument("--chunk", type=int, default=64, help="clients attacked together (vectorised)")
    p.add_argument("--workers", type=int, default=2,
                   help="Ray tasks at once (0: no Ray, one process); RAY_ADDRESS names a cluster")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_setting_flags(p)
    p.set_defaults(func=cmd_sweep)

