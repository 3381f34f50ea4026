"""``run_sim.py attack``: gradient inversion of single-image updates of chosen images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from experiments.common import add_attack_flags, attack_experiment_config
from experiments.targets import dataset_targets, folder_targets
from fl_defense.config import ConfigError


def cmd_attack(args) -> int:
    from tqdm import tqdm

    from experiments.single_image import attack_images
    from fl_defense.io import write_json, write_jsonl
    from fl_defense.plots import reconstruction_grid
    from fl_defense.task import select_device

    cfg = attack_experiment_config(args, defense=args.defense)
    if (args.dataset is None) == (args.images is None):
        raise ConfigError("give exactly one of --dataset NAME or --images DIR")
    if args.dataset is not None:
        args.n = 8 if args.n is None else args.n
        images, labels, names, num_classes = dataset_targets(args.dataset, args.n, cfg.seed, cfg.data_dir)
    else:
        images, labels, names, num_classes = folder_targets(Path(args.images), args.n, args.image_size, cfg.seed)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = str(select_device())
    write_json(out / "config.json", {"command": "attack", "dataset": args.dataset, "images": args.images,
                                     "n": len(images), "chunk": args.chunk, "device": device,
                                     **cfg.to_run_config()})
    print(f"attacking {len(images)} images ({images.shape[1]}x{images.shape[2]}x{images.shape[3]}) "
          f"behind {cfg.defense}, {cfg.attacker} attacker, {cfg.attack_method}")
    with tqdm(total=len(images), unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        scores, rows = attack_images(images, labels, num_classes, cfg.defense, cfg, device=device,
                                     chunk=args.chunk, progress=bar.update)
    for row, name in zip(rows, names):
        row["image"] = name
    write_jsonl(out / "attack.jsonl", rows)
    captions = [f"ssim {s:.2f} / adj {a:.2f}" for s, a in zip(scores.ssim, scores.ssim_adjusted)]
    reconstruction_grid(out / "grid.png", scores.truths, scores.recons, scores.adjusted, captions,
                        title=f"{cfg.defense}, {cfg.attacker} attacker")
    n = len(rows)
    secs = sum(r["seconds"] for r in rows)
    print(f"leaked {int(scores.leaked.sum())}/{n} (adjusted SSIM >= {cfg.leak_threshold}); "
          f"SSIM >= 0.9: {int((scores.ssim >= 0.9).sum())}/{n}; mean SSIM {scores.ssim.mean():.3f}, "
          f"adjusted {scores.ssim_adjusted.mean():.3f}, PSNR {np.minimum(scores.psnr, 100).mean():.1f} dB; "
          f"label accuracy {scores.summary()['label_acc']:.3f}; {secs:.0f}s")
    print(f"wrote {out / 'attack.jsonl'} and {out / 'grid.png'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("attack", help="iDLG/DLG on single-image gradients of a fresh DLG LeNet")
    src = p.add_argument_group("targets (one of)")
    src.add_argument("--dataset", help="mnist-embedded | lfw-embedded | mnist | cifar10 | lfw")
    src.add_argument("--images", help="a folder of PNG/JPEG files (label from names ending in _<label>)")
    p.add_argument("--image-size", dest="image_size", type=int, default=32, help="for --images")
    p.add_argument("--defense", default="none", help="NAME[:VALUE], as in run")
    p.add_argument("--n", type=int, default=None, help="number of images (default 8; all for --images)")
    p.add_argument("--out", required=True, help="output folder")
    add_attack_flags(p)
    p.set_defaults(func=cmd_attack)
