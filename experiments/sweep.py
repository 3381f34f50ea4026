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
recomputed, so an interrupted sweep resumes where it stopped.  All missing strengths of
one (data set, attacker, defense) are attacked in one vectorised call; these groups run as
tasks on Ray (:mod:`experiments.sweep_tasks`) -- on this machine by default, on the
cluster named by ``RAY_ADDRESS`` when it is set -- or in this process with
``--workers 0``.  The tables and figures (:mod:`experiments.sweep_report`) are rebuilt
from the cells at the end of every invocation.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from experiments.common import parse_list
from experiments.setting import add_setting_flags, defense_as_applied, setting_of, setting_overrides
from experiments.sweep_cells import sweep_cell_path
from experiments.sweep_report import summarise_sweep
from fl_defense.config import ATTACK_METHODS, ATTACKERS, ConfigError, ExperimentConfig, parse_run_config
from fl_defense.errors import suggest
from fl_defense.io import write_json

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
    overrides = setting_overrides(args)
    overrides.update({"attack-method": args.method, "leak-threshold": args.leak_threshold})
    if args.max_iter is not None:
        overrides["attack-max-iter"] = args.max_iter
    if args.restarts is not None:
        overrides["attack-restarts"] = args.restarts
    cfg = parse_run_config(overrides)
    if cfg.images_per_client < 1:
        raise ConfigError("the sweep attacks clients that train on images-per-client images each round; "
                          "give --images-per-client N (>= 1)")
    return cfg


def _check_resume(out: Path, setting: dict) -> None:
    """Refuse to mix cells of two settings in one folder."""
    previous = out / "config.json"
    if not previous.exists():
        return
    recorded = json.loads(previous.read_text()).get("setting", {})
    differ = [f"{k}: {recorded.get(k)!r} there, {setting[k]!r} here" for k in setting
              if str(recorded.get(k)) != str(setting[k])]
    if differ:
        raise ConfigError(f"{out} holds a sweep of another setting ({'; '.join(differ)}); use another --out")


def cmd_sweep(args) -> int:
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
    setting = setting_of(cfg)
    out = Path(args.out).resolve()
    _check_resume(out, setting)
    # targets first: a bad image file stops the sweep here, before anything is written
    from experiments.sweep_tasks import load_targets

    for kind, kcfg in sources.items():
        load_targets(kcfg, args.n, folders.get(kind), args.image_size)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "sweep", "setting": setting, "kinds": list(sources),
                                     "folders": folders, "defenses": defenses, "attackers": attackers,
                                     "grids": grids, "n": args.n, "max_leak_rate": args.max_leak_rate,
                                     "chunk": args.chunk, "config": cfg.to_run_config()})
    groups = []
    total = done = 0
    for kind in sources:
        for attacker in attackers:
            for defense in ["none", *defenses]:
                strengths = [0.0] if defense == "none" else grids[defense]
                todo = [s for s in strengths if not sweep_cell_path(out, kind, defense, attacker, s).exists()]
                total += len(strengths)
                done += len(strengths) - len(todo)
                if todo:
                    groups.append({"kind": kind, "attacker": attacker, "defense": defense, "strengths": todo})
    print(f"sweep: {total} cells ({done} already done) x {args.n} images, {len(groups)} groups; setting "
          + " ".join(f"{k}={v}" for k, v in setting.items()) + f"; output {out}", flush=True)
    start = time.perf_counter()
    run_groups(groups, {k: c.to_run_config() for k, c in sources.items()}, folders, out, args,
               workers=args.workers, quiet=args.quiet)
    summarise_sweep(out, list(sources), defenses, attackers, grids, args.max_leak_rate, cfg.leak_threshold)
    print(f"sweep done in {time.perf_counter() - start:.0f}s (this invocation); wrote "
          f"{out / 'thresholds.csv'}, thresholds.md, ssim_vs_strength.png, grids/")
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
    p.add_argument("--n", type=int, default=16, help="private images attacked per cell")
    p.add_argument("--max-leak-rate", dest="max_leak_rate", type=float, default=0.0,
                   help="a defense's threshold is the weakest strength whose leak rate is at most this")
    from fl_defense.defenses import get_defense

    for name in sweepable():
        p.add_argument(f"--grid-{name}", dest=_grid_dest(name), metavar="S1,S2,...",
                       help=f"strengths of {name}, weakest first (default {','.join(f'{v:g}' for v in get_defense(name).grid)})")
    a = p.add_argument_group("the attack")
    a.add_argument("--method", default=d.attack_method, choices=ATTACK_METHODS)
    a.add_argument("--max-iter", dest="max_iter", type=int, default=None,
                   help=f"L-BFGS iterations per try (default: attack-max-iter, {d.attack_max_iter})")
    # one restart: a defended target never converges, so each restart costs a full try
    a.add_argument("--restarts", type=int, default=1)
    a.add_argument("--leak-threshold", dest="leak_threshold", type=float, default=d.leak_threshold)
    a.add_argument("--chunk", type=int, default=64, help="clients attacked together (vectorised)")
    p.add_argument("--workers", type=int, default=2,
                   help="Ray tasks at once (0: no Ray, one process); RAY_ADDRESS names a cluster")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_setting_flags(p)
    p.set_defaults(func=cmd_sweep)

