"""``run_sim.py attack``: gradient inversion of the uploads of clients that train on chosen
images.

Consecutive groups of ``--images-per-client`` N images (default: ``--batch-size`` B) play
clients; each trains ``--local-steps`` K plain SGD steps of B over its N images in
shuffled epochs, exactly as a client's ``fit`` does (:func:`fl_defense.task.defended_payload`),
on a fresh ``--model`` (seeded), and uploads its defended update.  The server attacks every
upload knowing only what a server knows (:class:`attacks.threat.ThreatModel`), in one
vectorised call, and each client's reconstructions are scored one-to-one against the
images it trained on.  With B = K = N = 1 this is the papers' single-image, one-step iDLG.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments.common import add_attack_flags, attack_experiment_config
from experiments.targets import dataset_targets, folder_targets
from fl_defense.config import ConfigError
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


def cmd_attack(args) -> int:
    from tqdm import tqdm

    from experiments.client_attack import attack_clients, group_images
    from fl_defense.io import write_json, write_jsonl
    from fl_defense.plots import reconstruction_grid
    from fl_defense.task import select_device

    if (args.dataset is None) == (args.images is None):
        raise ConfigError("give exactly one of --dataset NAME or --images DIR")
    overrides = {"defense": args.defense, "local-steps": args.local_steps, "batch-size": args.batch_size,
                 "model": args.model}
    # N defaults to B here (each client trains on one batch), not to the run's images-per-client
    overrides["images-per-client"] = args.batch_size if args.images_per_client is None else args.images_per_client
    cfg = attack_experiment_config(args, **overrides)
    per_client = cfg.images_per_client or cfg.batch_size
    if args.tv < 0:
        raise ConfigError(f"--tv must be >= 0, got {args.tv!r}")
    if args.dataset is not None:
        args.n = 8 if args.n is None else args.n
        images, labels, names, num_classes = dataset_targets(args.dataset, args.n, cfg.seed, cfg.data_dir,
                                                             shuffle=per_client > 1)
    else:
        images, labels, names, num_classes = folder_targets(Path(args.images), args.n, args.image_size, cfg.seed)
    try:
        MODELS.get(cfg.model).check_size(int(images.shape[-1]))
    except ValueError as exc:
        raise ConfigError(f"--model {cfg.model}: {exc}") from None
    groups = group_images(len(images), per_client)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    device = str(select_device())
    write_json(out / "config.json", {"command": "attack", "dataset": args.dataset, "images": args.images,
                                     "n": len(images), "chunk": args.chunk, "device": device,
                                     "labels_given": args.labels_given, "tv": args.tv, **cfg.to_run_config()})
    source = "labels GIVEN to the attacker (upper bound)" if args.labels_given else "labels inferred"
    print(f"attacking {len(images)} images ({images.shape[1]}x{images.shape[2]}x{images.shape[3]}) as "
          f"{len(groups)} clients of {per_client}: {cfg.local_steps} local step(s) of batch {cfg.batch_size}, "
          f"lr {cfg.lr:g}, model {cfg.model}, behind {cfg.defense}; {cfg.attacker} attacker, {source}", flush=True)
    cpu0 = time.process_time()
    with tqdm(total=len(groups), unit="client", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        scores, rows, result = attack_clients(cfg, images, labels, num_classes, groups, device=device,
                                              labels_given=args.labels_given, chunk=args.chunk, tv_weight=args.tv)
        bar.update(len(groups))
    cpu = time.process_time() - cpu0
    for row in rows:
        row["image"] = names[row["image"]]
    write_jsonl(out / "attack.jsonl", rows)
    captions = [f"client {c}: ssim {s:.2f} / adj {a:.2f}"
                for c, s, a in zip(scores.client, scores.ssim, scores.ssim_adjusted)]
    reconstruction_grid(out / "grid.png", scores.truths, scores.recons, scores.adjusted, captions,
                        title=f"{cfg.defense}, {cfg.attacker} attacker, K={cfg.local_steps} B={cfg.batch_size}")
    n = len(rows)
    true_sets = [scores.label_true[scores.client == c] for c in range(len(groups))]
    counts = label_count_accuracy(true_sets, result.labels, num_classes)
    print(f"leaked {int(scores.leaked.sum())}/{n} (adjusted SSIM >= {cfg.leak_threshold}); "
          f"SSIM >= 0.9: {int((scores.ssim >= 0.9).sum())}/{n}; mean SSIM {scores.ssim.mean():.3f}, "
          f"adjusted {scores.ssim_adjusted.mean():.3f} (median {np.median(scores.ssim_adjusted):.3f}), "
          f"PSNR {np.minimum(scores.psnr, 100).mean():.1f} dB")
    print(f"label accuracy {scores.summary()['label_acc']:.3f} per image, {counts:.3f} as counts "
          f"({'given' if args.labels_given else 'inferred'}); {result.seconds:.0f}s "
          f"({result.seconds / len(groups):.1f}s per client, {cpu / len(groups):.1f} CPU-s per client)")
    print(f"wrote {out / 'attack.jsonl'} and {out / 'grid.png'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("attack", help="invert the uploads of clients that train on chosen images")
    src = p.add_argument_group("targets (one of)")
    src.add_argument("--dataset", help="mnist-embedded | lfw-embedded | mnist | cifar10 | lfw")
    src.add_argument("--images", help="a folder of PNG/JPEG files (label from names ending in _<label>)")
    p.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="for --images: resize every file to SxS (default: the files' own size, which must be "
                        "square and shared)")
    p.add_argument("--defense", default="none", help="NAME[:VALUE], as in run")
    p.add_argument("--n", type=int, default=None, help="number of images (default 8; all for --images)")
    p.add_argument("--out", required=True, help="output folder")
    client = p.add_argument_group("the clients (as in a run)")
    client.add_argument("--batch-size", dest="batch_size", type=int, default=1, help="B (default 1)")
    client.add_argument("--local-steps", dest="local_steps", type=int, default=1, help="K (default 1)")
    client.add_argument("--images-per-client", dest="images_per_client", type=int, default=None,
                        help="N, the images each client trains on (default: B)")
    client.add_argument("--model", default="lenet", help=f"{MODELS.choices_text()} (default lenet)")
    p.add_argument("--labels-given", dest="labels_given", action="store_true",
                   help="hand the true labels to the attacker (an upper bound; flagged in the outputs)")
    p.add_argument("--tv", type=float, default=0.0, help="weight of the total-variation prior (0: off)")
    add_attack_flags(p)
    p.set_defaults(func=cmd_attack)
