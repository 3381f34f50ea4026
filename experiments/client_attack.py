"""Attacking clients' real uploads: groups of images play clients that train the way ``fit``
does, the server inverts each upload, and the reconstructions are scored one-to-one.

:func:`attack_clients` is the experiment-level entry point (the ``attack`` command, the
benchmarks and the threshold sweep use it).  For every group of images (one client):

1. **client side** -- :func:`fl_defense.task.defended_payload`, the very code path of a
   client's ``fit``: ``local-steps`` SGD steps of ``batch-size`` over the group's images
   in shuffled epochs (seeded by seed, client, round), the payload, the group's defense;
   :func:`fl_defense.task.payload_to_weights` makes the upload, and the client reports the
   number of distinct images it trained on (``FitRes.num_examples``).
2. **server side** -- a :class:`attacks.threat.ThreatModel` per upload, from the config's
   public facts and the upload only; :func:`attacks.updates.invert_updates` attacks all
   uploads in one vectorised call.
3. **scoring** -- :func:`fl_defense.scoring.score` matches each client's reconstructions
   one-to-one to the images it trained on (every image counts once), against the public
   decoy pool when one is given (the identification criterion, :mod:`fl_defense.scoring`).
   The scorer reads the private images through an oracle (``oracle(client) -> (images,
   labels)``), apart from the client side, so that a test can hand it other images and
   check that the reconstructions do not change.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from attacks.settings import resolve_device
from attacks.threat import ThreatModel, attack_config
from attacks.updates import UpdateAttackResult, invert_updates, update_options
from fl_defense.config import ExperimentConfig
from fl_defense.decoys import DecoyPool
from fl_defense.defenses import DefenseSpec
from fl_defense.scoring import Scores, score
from fl_defense.models import build_model, state_kinds
from fl_defense.task import (defended_payload, examples_used, get_weights, payload_to_weights,
                             round_batches)


def experiment_model(cfg: ExperimentConfig, in_channels: int, image_size: int, num_classes: int) -> torch.nn.Module:
    """The global model of an attack experiment: ``cfg.model`` initialised from ``cfg.seed``
    (its registry entry's initialisation, as :func:`fl_defense.task.new_model`)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, in_channels, image_size, num_classes)


def public_mean(pool: DecoyPool | None) -> np.ndarray | None:
    """The mean image of a public decoy pool: an image of the kind a server knows from public
    data, where the attack's first tries start (``None`` without a pool)."""
    return None if pool is None else pool.images.images.mean(0).astype(np.float32)


def group_images(n_images: int, per_client: int) -> list[np.ndarray]:
    """Consecutive groups of ``per_client`` positions (the last one may be smaller)."""
    if per_client < 1:
        raise ValueError(f"images per client must be >= 1; got {per_client}")
    return [np.arange(s, min(s + per_client, n_images)) for s in range(0, n_images, per_client)]


def client_uploads(cfg: ExperimentConfig, model: torch.nn.Module, global_w: Sequence[np.ndarray],
                   images: np.ndarray, labels: np.ndarray, groups: Sequence[np.ndarray],
                   defenses: Sequence[DefenseSpec], client_ids: Sequence[int], rounds: Sequence[int],
                   device: torch.device) -> tuple[list[ThreatModel], list[np.ndarray]]:
    """Every group's upload through :func:`defended_payload`, as the server's threat models,
    and the positions (into ``images``) of the images each client trained on; group g is
    client ``client_ids[g]`` in round ``rounds[g]`` (its draws and defense are seeded by both)."""
    kinds = state_kinds(model)
    threats, used = [], []
    for grp, spec, cid, server_round in zip(groups, defenses, client_ids, rounds):
        # a group is the images the client holds; with images-per-client N < len(group) it
        # draws N of them this round, as in fit (a group of at most N: all of them)
        ccfg = dataclasses.replace(cfg, defense=spec)
        payload, _, n_used = defended_payload(ccfg, model, kinds, global_w, images[grp], labels[grp], int(cid),
                                              server_round, device)
        upload = payload_to_weights(global_w, payload, kinds)
        threats.append(ThreatModel.from_config(ccfg, global_w, upload, n_used))
        batches = round_batches(ccfg, len(grp), int(cid), server_round)
        used.append(grp[examples_used(batches)])
    return threats, used


def attack_clients(cfg: ExperimentConfig, images: np.ndarray, labels: np.ndarray, num_classes: int,
                   groups: Sequence[np.ndarray] | None = None,
                   defense: DefenseSpec | Sequence[DefenseSpec] | None = None,
                   global_weights: Sequence[np.ndarray] | None = None, *, device: str = "auto",
                   labels_given: bool = False, client_ids: Sequence[int] | None = None,
                   server_round: int | Sequence[int] = 0, chunk: int = 64,
                   pool: DecoyPool | None = None, oracle=None,
                   decoy_labels: np.ndarray | None = None) -> tuple[Scores, list[dict], UpdateAttackResult]:
    """Attack the uploads of clients that train on ``groups`` of ``images``; score; rows.

    Args:
        cfg: the federation's setting (``lr``, ``local-steps``, ``batch-size``, ``model``,
            ``seed``) and the attack's (``attacker``, ``attack-method``, ``attack-max-iter``,
            ``attack-restarts``, ``leak-threshold``); ``cfg.defense`` unless ``defense``.
        images, labels: ``[M, C, H, W]`` in [0, 1] and ``[M]``.
        groups: positions of each client's images (default: consecutive groups of
            ``images-per-client``, or of ``batch-size`` when that is 0).
        defense: one spec for all clients, or one per group (all of one defense name, so
            that one aware objective fits them).
        global_weights: the global model the clients start from (``state_dict`` order);
            default: :func:`experiment_model`'s.
        labels_given: hand the true labels to the attack (an upper bound; flagged in rows).
        client_ids: seeds each client's batches and defense (default: group position).
        server_round: the round the uploads belong to (seeds batches and defenses), one for
            all groups or one per group.
        chunk: most targets optimised at once.
        pool: the public decoy pool of the identification criterion (``None``: no decoys);
            its mean image is also where the attack's first tries start (public data).
        oracle: ``oracle(i) -> (images, labels)``, the private images client group ``i``
            trained on, for the scorer only (default: read from ``images``/``labels``).
        decoy_labels: ``[M]``, the labels that pick each image's candidate decoys (default
            ``labels``; -1: every decoy).
    Returns:
        ``(scores, rows, result)``: per-image :class:`fl_defense.scoring.Scores`, one row per
        image the clients trained on (``image`` = position in ``images``, ``client``, the
        scorer's columns of :meth:`Scores.rows` -- ``leaked`` (identification),
        ``leaked_paper``, ``ssim_decoy_max``, ``psnr``, ``failed`` ... --, ``seconds``: the
        call's wall time shared equally by its clients, then by each client's images,
        ``label_source``, ``threat``), and the attack's raw result.
    """
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be [M, C, H, H]; got {images.shape}")
    if groups is None:
        groups = group_images(len(images), cfg.images_per_client or cfg.batch_size)
    groups = [np.asarray(g, dtype=np.int64) for g in groups]
    defenses = ([cfg.defense if defense is None else defense] * len(groups)
                if defense is None or isinstance(defense, DefenseSpec) else list(defense))
    if len(defenses) != len(groups) or len({d.name for d in defenses}) != 1:
        raise ValueError(f"give one defense, or one per client group of a single kind; got {len(defenses)} "
                         f"for {len(groups)} groups")
    ids = list(range(len(groups))) if client_ids is None else [int(c) for c in client_ids]
    dev = resolve_device(device)
    device = str(dev)
    _, c, h, _ = images.shape
    model = experiment_model(cfg, c, h, num_classes)
    global_w = get_weights(model) if global_weights is None else [np.asarray(w) for w in global_weights]
    rounds = [int(server_round)] * len(groups) if np.ndim(server_round) == 0 else [int(r) for r in server_round]
    if len(rounds) != len(groups):
        raise ValueError(f"give one round, or one per client group; got {len(rounds)} for {len(groups)} groups")
    threats, used = client_uploads(cfg, model, global_w, images, labels, groups, defenses, ids, rounds, dev)
    acfg = dataclasses.replace(cfg, defense=defenses[0])
    result = invert_updates(model, threats, (c, h, h), num_classes, attack_config(acfg, device=device, batch_size=chunk),
                            update_options(acfg, model, labels_given, init_image=public_mean(pool)),
                            labels=[labels[u] for u in used] if labels_given else None)
    # ------------------------------------------------------------ scoring side (the oracle)
    truth = [oracle(i) if oracle is not None else (images[u], labels[u]) for i, u in enumerate(used)]
    dlab = None if decoy_labels is None else [np.asarray(decoy_labels)[u] for u in used]
    scores = score([t[0] for t in truth], [t[1] for t in truth], result.images, result.labels, cfg.leak_threshold,
                   pool, failed=result.failed, decoy_labels=dlab)
    per_client = result.seconds / len(groups)
    per_image = scores.rows()
    rows, k = [], 0
    for ci, u in enumerate(used):
        for pos in u:
            rows.append({"image": int(pos), "client": ids[ci], "round": rounds[ci], **per_image[k],
                         "seconds": round(per_client / len(u), 3),
                         "label_source": "given" if labels_given else "inferred", "threat": result.threat[ci]})
            k += 1
    return scores, rows, result
