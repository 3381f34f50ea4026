"""``run_sim.py attack``: gradient inversion of the uploads of clients that train on chosen
images, scored by both leak criteria.

Consecutive groups of ``images-per-client`` N images play clients; each trains
``local-steps`` K plain SGD steps of ``batch-size`` B over its N images in shuffled epochs,
exactly as a client's ``fit`` does (:func:`fl_defense.task.defended_payload`), on a fresh
model (seeded), and uploads its defended update.  The setting is the run's by default (the
same flags and defaults, :mod:`experiments.setting`); ``--setting papers`` is the papers'
single-image, one-step iDLG.  The server attacks every upload knowing only what a server
knows (:class:`attacks.threat.ThreatModel`), in one vectorised call, and each client's
reconstructions are scored one-to-one against the images it trained on, against the
public decoy pool (:mod:`experiments.targets`): the data set's test split for
the setting's data set, ``--decoys DIR`` for ``--images``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments.setting import EXPERIMENT_MAX_ITER, add_setting_flags, attack_setting
from experiments.targets import SPLITS, dataset_targets, decoy_pool, folder_targets
from fl_defense.config import ATTACK_METHODS, ATTACKERS, ConfigError, ExperimentConfig
from fl_defense.models import MODELS


def label_count_accuracy(true_sets, pred_sets, num_classes: int) -> float:
    """Fraction of a client's labels recovered as a multiset (Wainakh et al. 2022's label
    count accuracy), over all clients' images."""
    hit = total = 0
    for t, p in zip(true_sets, pred_sets):
        t, p = np.asarray(t), np.asarray(p)
        if len(t) == 0 or (p < 0).any():
            total += len(t)
            continue
        hit += int(np.minimum(np.bincount(t, minlength=num_classes), np.bincount(p, minlength=num_classes)).sum())
        total += len(t)
    return hit / max(total, 1)


def leak_line(summary: dict, n: int) -> str:
    """``leaked k/n (identification; 95% CI [l, h]); paper criterion k/n (...); failed f/n``."""
    from fl_defense.stats import leak_interval95

    def ci(k):
        lo, hi = leak_interval95(k, n)
        return f"95% CI {lo:.1%}-{hi:.1%}"

    paper = summary["leaked_paper"]
    ident = summary["leaked"]
    head = ("leaked: no decoys (identification criterion off)" if ident is None else
            f"leaked {ident}/{n} (identification; {ci(ident)})")
    return f"{head}; paper criterion {paper}/{n} ({ci(paper)}); failed {summary['failed']}/{n}"


#: The most labels the attack command's per-label line lists.
MAX_LABELS_LISTED = 20


def label_line(by_label: dict) -> str | None:
    """``by label: NAME k/n identified (paper k/n); ...`` from :meth:`Scores.by_label`
    (``None`` past :data:`MAX_LABELS_LISTED` labels, or without any)."""
    if not by_label or len(by_label) > MAX_LABELS_LISTED:
        return None
    parts = []
    for c in by_label.values():
        ident = "no decoys" if c["leaked"] is None else f"{c['leaked']}/{c['images']} identified"
        parts.append(f"{c['name']} {ident} (paper {c['leaked_paper']}/{c['images']})")
    return "by label: " + "; ".join(parts)


def cmd_attack(args) -> int:
    from experiments.client_attack import attack_clients, group_images
    from fl_defense.io import write_json, write_jsonl
    from fl_defense.plots import reconstruction_grid
    from fl_defense.scoring import save_record
    from fl_defense.task import select_device

    if args.chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {args.chunk!r}")
    if args.images is not None and args.split != "evaluation":
        raise ConfigError("--split applies to a data set, not to --images (a folder has no splits)")
    cfg = attack_setting(args, defense=args.defense, attacker=args.attacker)
    per_client = cfg.images_per_client
    dataset = None if args.images is not None else cfg.dataset
    if dataset is not None:
        targets = dataset_targets(dataset, 8 if args.n is None else args.n, cfg.seed, cfg.data_dir,
                                  shuffle=per_client > 1, split=args.split)
    else:
        targets = folder_targets(Path(args.images), args.n, args.image_size, cfg.seed)
    images = targets.images
    try:
        MODELS.get(cfg.model).check_size(int(images.shape[-1]))
    except ValueError as exc:
        raise ConfigError(f"--model {cfg.model}: {exc}") from None
    pool = decoy_pool(dataset, args.decoys, cfg, targets, cfg.decoy_pool_size)
    groups = group_images(len(images), per_client)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = str(select_device())
    meta = {"command": "attack", "targets": dataset or args.images, "images": args.images, "split": args.split,
            "preset": args.setting, "n": len(images), "chunk": args.chunk, "device": device,
            "labels_given": args.labels_given, "decoys": None if pool is None else pool.source,
            "decoy_spec": None if pool is None else pool.spec, **cfg.to_run_config()}
    write_json(out / "config.json", meta)
    source = "labels GIVEN to the attacker (upper bound)" if args.labels_given else "labels inferred"
    print(f"attacking {len(images)} images ({images.shape[1]}x{images.shape[2]}x{images.shape[3]}) as "
          f"{len(groups)} clients of {per_client}: {cfg.local_steps} local step(s) of batch {cfg.batch_size}, "
          f"lr {cfg.lr:g}, model {cfg.model}, behind {cfg.defense}; {cfg.attacker} attacker, {source}", flush=True)
    print(f"decoys: {pool.source}" if pool is not None else
          "decoys: none (give --decoys DIR for a folder of images; the identification criterion is off)", flush=True)
    cpu0 = time.process_time()
    scores, rows, result = attack_clients(cfg, images, targets.labels, targets.num_classes, groups, device=device,
                                          labels_given=args.labels_given, chunk=args.chunk,
                                          pool=pool, decoy_labels=targets.decoy_labels)
    cpu = time.process_time() - cpu0
    for row in rows:
        row["image"] = targets.names[row["image"]]
    write_jsonl(out / "attack.jsonl", rows)
    save_record(out / "attack.npz", scores, result.images, result.labels,
                [r["image"] for r in rows], {**meta, "leak-threshold": cfg.leak_threshold})
    captions = [f"client {c}: ssim {s:.2f} / adj {a:.2f}"
                for c, s, a in zip(scores.client, scores.ssim, scores.ssim_adjusted)]
    reconstruction_grid(out / "grid.png", scores.truths, scores.recons, scores.adjusted, captions,
                        title=f"{cfg.defense}, {cfg.attacker} attacker, K={cfg.local_steps} B={cfg.batch_size}")
    n = len(rows)
    summary = scores.summary()
    true_sets = [scores.label_true[scores.client == c] for c in range(len(groups))]
    counts = label_count_accuracy(true_sets, result.labels, targets.num_classes)
    print(leak_line(summary, n))
    print(f"adjusted SSIM >= {cfg.leak_threshold} (both criteria); mean SSIM {scores.ssim.mean():.3f}, adjusted "
          f"{scores.ssim_adjusted.mean():.3f} (median {np.median(scores.ssim_adjusted):.3f}), PSNR "
          f"{np.minimum(scores.psnr, 100).mean():.1f} dB" + (
              f", best decoy's adjusted SSIM {summary['ssim_decoy_max_mean']:.3f}" if pool is not None else ""))
    # per label only where every label is the image's own (not drawn for a file without one)
    per_label = label_line(scores.by_label(targets.class_names)) if targets.known.all() else None
    if per_label is not None:
        print(per_label)
    failed = [r["image"] for r in rows if r["failed"]]
    if failed:
        print(f"failed (counted as not leaked): {', '.join(failed)}")
    print(f"label accuracy {summary['label_acc']:.3f} per image, {counts:.3f} as counts "
          f"({'given' if args.labels_given else 'inferred'}); {result.seconds:.0f}s "
          f"({result.seconds / len(groups):.1f}s per client, {cpu / len(groups):.1f} CPU-s per client)")
    print(f"wrote {out / 'attack.jsonl'}, {out / 'attack.npz'} and {out / 'grid.png'}")
    return 0


def register(sub) -> None:
    d = ExperimentConfig()
    p = sub.add_parser("attack", help="invert the uploads of clients that train on chosen images")
    p.add_argument("--images", help="attack a folder of PNG/JPEG files (label from names ending in _<label>) "
                                    "instead of the setting's --dataset")
    p.add_argument("--split", choices=SPLITS, default="evaluation",
                   help="the data set's evaluation split (its train split, which the clients hold; default) or "
                        "its tuning split (the test split: public images to tune the attack on)")
    p.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="for --images: resize every file to SxS (default: the files' own size, which must be "
                        "square and shared)")
    p.add_argument("--decoys", default=None, metavar="DIR",
                   help="a folder of public images the reconstructions are compared with (identification); default: "
                        "the data set's test split, none with --images; 'none': off")
    p.add_argument("--decoy-pool-size", dest="decoy_pool_size", type=int, default=d.decoy_pool_size,
                   help=f"the most test-split images in the pool (default {d.decoy_pool_size})")
    p.add_argument("--defense", default="none", help="NAME[:VALUE], as in run")
    p.add_argument("--n", type=int, default=None, help="number of images (default 8; all for --images)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--labels-given", dest="labels_given", action="store_true",
                   help="hand the true labels to the attacker (an upper bound; flagged in the outputs)")
    a = p.add_argument_group("the attack")
    a.add_argument("--attacker", default=d.attacker, choices=ATTACKERS,
                   help="naive: the papers' L2 matching; aware: picks the objective that fits the defense")
    a.add_argument("--method", default=d.attack_method, choices=ATTACK_METHODS)
    a.add_argument("--max-iter", dest="max_iter", type=int, default=None,
                   help=f"L-BFGS iterations per try (default {EXPERIMENT_MAX_ITER}, at least the hook's "
                        f"attack-max-iter, {d.attack_max_iter})")
    a.add_argument("--restarts", type=int, default=None, help=f"default attack-restarts, {d.attack_restarts}")
    a.add_argument("--tv", type=float, default=None,
                   help=f"weight of the total-variation prior (default attack-tv, {d.attack_tv:g}; 0: off)")
    a.add_argument("--leak-threshold", dest="leak_threshold", type=float, default=d.leak_threshold)
    a.add_argument("--chunk", type=int, default=64, help="targets attacked together (vectorised)")
    add_setting_flags(p)
    p.set_defaults(func=cmd_attack)
