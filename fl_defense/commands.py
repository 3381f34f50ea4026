"""The ``attack``, ``sweep`` and ``train`` commands of ``run_sim.py``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fl_defense.config import ATTACKERS, ATTACK_METHODS, ConfigError, ExperimentConfig


def _common_attack_flags(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    p.add_argument("--attacker", default="naive", choices=ATTACKERS,
                   help="naive: the papers' L2 matching; aware: picks the objective that fits the defense")
    p.add_argument("--method", default=d.attack_method, choices=ATTACK_METHODS)
    p.add_argument("--lr", type=float, default=d.lr, help="the client's learning rate (its update is -lr*g)")
    p.add_argument("--max-iter", dest="max_iter", type=int, default=d.attack_max_iter)
    p.add_argument("--restarts", type=int, default=d.attack_restarts)
    p.add_argument("--leak-threshold", dest="leak_threshold", type=float, default=d.leak_threshold)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=64, help="targets attacked together (vectorised)")
    p.add_argument("--data-dir", dest="data_dir", default="")


def _settings(args):
    from fl_defense.attack_exp import AttackSettings
    from fl_defense.task import select_device

    if args.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr!r}")
    if args.max_iter < 1:
        raise ConfigError(f"--max-iter must be >= 1, got {args.max_iter!r}")
    if args.restarts < 0:
        raise ConfigError(f"--restarts must be >= 0, got {args.restarts!r}")
    if not 0 < args.leak_threshold <= 1:
        raise ConfigError(f"--leak-threshold must be in (0, 1], got {args.leak_threshold!r}")
    if args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk!r}")
    return AttackSettings(attacker=args.attacker, method=args.method, lr=args.lr, max_iter=args.max_iter,
                          restarts=args.restarts, leak_threshold=args.leak_threshold, seed=args.seed,
                          chunk=args.chunk, device=str(select_device()))


def dataset_targets(name: str, n: int, seed: int, data_dir: str = ""):
    """``n`` images of a data set's test split, chosen with ``seed``: (images, labels, names, num_classes)."""
    from fl_defense.data import load_dataset

    _, test = load_dataset(name, data_dir=data_dir or None, seed=seed)
    if not 1 <= n <= len(test.labels):
        raise ConfigError(f"--n must be in [1, {len(test.labels)}] for {name}, got {n}")
    idx = np.sort(np.random.default_rng([seed, 7]).choice(len(test.labels), size=n, replace=False))
    return test.images[idx], test.labels[idx], [f"{name}[{i}]" for i in idx], test.num_classes


def folder_targets(folder: Path, n: int | None, image_size: int, seed: int):
    """Images of a folder (label from ``*_<label>`` names, else a seeded label the attack must infer)."""
    from PIL import Image

    from fl_defense.data import IMAGE_SUFFIXES, load_image_folder

    if not folder.is_dir():
        raise FileNotFoundError(f"--images folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    grey = all(Image.open(p).mode in ("1", "L", "LA", "I", "I;16", "F") for p in files) if files else True
    ds, names = load_image_folder(folder, image_size=image_size, channels=1 if grey else 3)
    num_classes = max(10, ds.num_classes)
    labels = ds.labels.copy()
    unknown = labels < 0
    labels[unknown] = np.random.default_rng([seed, 11]).integers(0, num_classes, size=int(unknown.sum()))
    if n is not None:
        if n < 1:
            raise ConfigError(f"--n must be >= 1, got {n}")
        ds_images, labels, names = ds.images[:n], labels[:n], names[:n]
    else:
        ds_images = ds.images
    return ds_images, labels, names, num_classes


def cmd_attack(args) -> int:
    from tqdm import tqdm

    from fl_defense.attack_exp import attack_images
    from fl_defense.defenses import parse_defense
    from fl_defense.io import write_json, write_jsonl
    from fl_defense.plots import reconstruction_grid

    defense = parse_defense(args.defense)
    settings = _settings(args)
    if (args.dataset is None) == (args.images is None):
        raise ConfigError("give exactly one of --dataset NAME or --images DIR")
    if args.dataset is not None:
        args.n = 8 if args.n is None else args.n
        images, labels, names, num_classes = dataset_targets(args.dataset, args.n, args.seed, args.data_dir)
    else:
        images, labels, names, num_classes = folder_targets(Path(args.images), args.n, args.image_size, args.seed)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "attack", "dataset": args.dataset, "images": args.images,
                                     "defense": str(defense), "n": len(images), **settings.__dict__})
    print(f"attacking {len(images)} images ({images.shape[1]}x{images.shape[2]}x{images.shape[3]}) "
          f"behind {defense}, {settings.attacker} attacker, {settings.method}")
    with tqdm(total=len(images), unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        scores, rows = attack_images(images, labels, num_classes, defense, settings, progress=bar.update)
    for row, name in zip(rows, names):
        row["image"] = name
    write_jsonl(out / "attack.jsonl", rows)
    captions = [f"ssim {s:.2f} / adj {a:.2f}" for s, a in zip(scores.ssim, scores.ssim_adjusted)]
    reconstruction_grid(out / "grid.png", scores.truths, scores.recons, scores.adjusted, captions,
                        title=f"{defense}, {settings.attacker} attacker")
    n = len(rows)
    secs = sum(r["seconds"] for r in rows)
    print(f"leaked {int(scores.leaked.sum())}/{n} (adjusted SSIM >= {settings.leak_threshold}); "
          f"SSIM >= 0.9: {int((scores.ssim >= 0.9).sum())}/{n}; mean SSIM {scores.ssim.mean():.3f}, "
          f"adjusted {scores.ssim_adjusted.mean():.3f}, PSNR {np.minimum(scores.psnr, 100).mean():.1f} dB; "
          f"label accuracy {np.mean(scores.label_true == scores.label_pred):.3f}; {secs:.0f}s")
    print(f"wrote {out / 'attack.jsonl'} and {out / 'grid.png'}")
    return 0


def register_commands(sub) -> None:
    p = sub.add_parser("attack", help="iDLG/DLG on single-image gradients of a fresh DLG LeNet")
    src = p.add_argument_group("targets (one of)")
    src.add_argument("--dataset", help="mnist-embedded | lfw-embedded | mnist | cifar10 | lfw")
    src.add_argument("--images", help="a folder of PNG/JPEG files (label from names ending in _<label>)")
    p.add_argument("--image-size", dest="image_size", type=int, default=32, help="for --images")
    p.add_argument("--defense", default="none", help="NAME[:VALUE], as in run")
    p.add_argument("--n", type=int, default=None, help="number of images (default 8; all for --images)")
    p.add_argument("--out", required=True, help="output folder")
    _common_attack_flags(p)
    p.set_defaults(func=cmd_attack)
    from fl_defense.experiments import register_experiment_commands

    register_experiment_commands(sub, _common_attack_flags)
