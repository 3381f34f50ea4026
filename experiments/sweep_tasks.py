"""The sweep's work: its targets (clients and their images), the attack of one group of
cells, and running the groups as tasks on Ray or in this process.

A group is one (kind of data, attacker, defense) with the strengths still to do: its
targets and decoys are loaded once, each strength (a cell) is attacked in its own vectorised
call over its clients, and every finished cell is written on its own (atomically).  A
cell's numbers are thus those of the cell alone, whichever cells ran beside it in its group
(the task size, a resume), and a killed sweep resumes by cell.

Ray: ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` when it is set (the code
travels as the job's working directory) and otherwise starts Ray on this machine with
``--workers`` CPUs, one per task; each task runs torch on one thread.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from experiments.sweep_cells import save_sweep_cell
from fl_defense.config import ConfigError, ExperimentConfig, parse_run_config

PROJECT_DIR = Path(__file__).resolve().parent.parent


@dataclass
class ClientImages:
    """One target of the sweep: a client's id and the round it plays (both seed its draws,
    its batches and its defense, as in a run) and the images it holds (its partition; a
    group of files for a folder), with their names; ``known`` says whether a label is the
    image's own (``False``: drawn for a file without one)."""

    client_id: int
    images: np.ndarray
    labels: np.ndarray
    names: list[str]
    round: int = 1
    known: np.ndarray | None = None


@dataclass
class Targets:
    clients: list[ClientImages]
    shape: Any  # what fl_defense.task.new_model needs: in_channels, image_size, num_classes


def load_targets(cfg: ExperimentConfig, n: int, folder: str | None, image_size: int | None,
                 first_round: int = 1) -> Targets:
    """Enough targets for ``n`` private images.

    On a data set: the run's clients, in the order client 0..C-1 in round ``first_round``,
    then the same clients in the next round, and so on, each drawing its round's
    ``images-per-client`` images from its partition of the training split as in a run (the
    draws of two rounds of one client may share an image, as in a run).  On a folder:
    consecutive groups of ``images-per-client`` files.  Raises :class:`ConfigError` (naming
    the value) when a folder holds too few files."""
    per = cfg.images_per_client
    want = math.ceil(n / per)
    if folder is None:
        from fl_defense.task import client_indices, load_data

        train, _ = load_data(cfg)
        clients = []
        for k in range(want):
            cid, server_round = k % cfg.num_clients, first_round + k // cfg.num_clients
            idx = client_indices(cfg, cid)
            clients.append(ClientImages(cid, train.images[idx], train.labels[idx],
                                        [f"{cfg.dataset}[train {i}]" for i in idx], server_round))
        return Targets(clients, train)
    from experiments.targets import folder_targets

    found = folder_targets(Path(folder), None, image_size, cfg.seed)
    images, labels, names, num_classes = found.images, found.labels, found.names, found.num_classes
    groups = len(images) // per
    if groups < 1:
        raise ConfigError(f"--images {folder} holds {len(images)} images, fewer than images-per-client={per}")
    groups = min(groups, want)
    clients = [ClientImages(c, images[c * per:(c + 1) * per], labels[c * per:(c + 1) * per],
                            names[c * per:(c + 1) * per], first_round, found.known[c * per:(c + 1) * per])
               for c in range(groups)]

    @dataclass
    class Shape:
        in_channels: int
        image_size: int
        num_classes: int

    return Targets(clients, Shape(int(images.shape[1]), int(images.shape[2]), int(num_classes)))


def attack_group(group: dict, cfg_flat: dict, folder: str | None, out: str, n: int, image_size: int | None,
                 chunk: int, device: str, threads: int | None = None, decoys: str | None = None,
                 checkpoint: str | None = None) -> int:
    """Attack every strength of one group and write its cells; returns the cells written.

    Every target plays once per strength: its upload is made by
    :func:`experiments.client_attack.attack_clients` through the client's own code path
    (from the run's initial global model, or from ``checkpoint``'s weights and after its
    round; batches and defense seeded by seed, client and round as in ``fit``), each
    strength's uploads are inverted in one vectorised call of their own (the attack's
    starts depend on a target's place in its call: one call per cell keeps a cell's result
    independent of the group), and every image is scored by both criteria against the
    decoy pool (``decoys``: a folder; default the data set's test split, none for a folder
    of targets)."""
    import torch

    from experiments.client_attack import attack_clients
    from experiments.setting import defense_as_applied, setting_of
    from fl_defense.defenses import parse_defense
    from fl_defense.task import get_weights, new_model

    if threads:
        torch.set_num_threads(threads)
    cfg = replace(parse_run_config(cfg_flat), attacker=group["attacker"])
    global_w, first_round = sweep_start(cfg, checkpoint)
    targets = load_targets(cfg, n, folder, image_size, first_round)
    name = defense_as_applied(group["defense"], cfg.model)
    specs = [parse_defense("none" if name == "none" else f"{name}:{s}") for s in group["strengths"]]
    clients = targets.clients
    images = np.concatenate([c.images for c in clients])
    labels = np.concatenate([c.labels for c in clients])
    known = np.concatenate([np.ones(len(c.labels), bool) if c.known is None else c.known for c in clients])
    names = [nm for c in clients for nm in c.names]
    starts = np.cumsum([0] + [len(c.labels) for c in clients])
    own = [np.arange(starts[i], starts[i + 1]) for i in range(len(clients))]
    if global_w is None:
        global_w = get_weights(new_model(cfg, targets.shape))
    pool = sweep_pool(cfg, folder, decoys, images.shape)
    setting = {**setting_of(cfg), "dataset": group["kind"]}  # a folder's kind, not the run's data set
    for strength, spec in zip(group["strengths"], specs):
        scores, rows, result = attack_clients(cfg, images, labels, int(targets.shape.num_classes), groups=own,
                                              defense=[spec] * len(clients), global_weights=global_w,
                                              device=device, client_ids=[c.client_id for c in clients],
                                              server_round=[c.round for c in clients], chunk=chunk,
                                              pool=pool, decoy_labels=np.where(known, labels, -1))
        part = [dict(r, image=names[r["image"]]) for r in rows]
        record = {"scores": scores, "recons": result.images, "pred_labels": result.labels,
                  "names": [r["image"] for r in part],
                  "meta": {"command": "sweep", "kind": group["kind"], "attacker": group["attacker"],
                           "defense": str(spec), "leak-threshold": cfg.leak_threshold, "checkpoint": checkpoint,
                           "decoys": None if pool is None else pool.source,
                           "decoy_spec": None if pool is None else pool.spec, **cfg.to_run_config()}}
        save_sweep_cell(Path(out), group["kind"], group["attacker"], group["defense"], strength, part, record,
                        setting, str(spec), None if pool is None else pool.source)
    return len(specs)


def sweep_pool(cfg: ExperimentConfig, folder: str | None, decoys: str | None, shape):
    """The decoy pool of the sweep's cells: ``decoys`` (a folder) when given, else the data
    set's test split; ``None`` (no decoys) for a folder of targets without ``decoys``."""
    from fl_defense.decoys import NO_DECOYS, pool_for_dataset, pool_from_folder

    if decoys == NO_DECOYS:
        return None
    if decoys:
        return pool_from_folder(decoys, int(shape[-1]), int(shape[1]))
    if folder is None:
        return pool_for_dataset(cfg.dataset, cfg.data_dir, cfg.seed, cfg.decoy_pool_size)
    return None


def sweep_start(cfg: ExperimentConfig, checkpoint: str | None):
    """``(global weights, first round)`` of the sweep's uploads: ``(None, 1)`` for the run's
    initial model, else the weights of a run's ``checkpoint.npz`` (in the folder
    ``checkpoint``) and the round after it."""
    if not checkpoint:
        return None, 1
    from fl_defense.task import get_weights, new_model
    from strategies.checkpoint import load_checkpoint

    found = load_checkpoint(Path(checkpoint))
    if found is None:
        raise ConfigError(f"--checkpoint {checkpoint}: the folder holds no checkpoint.npz")
    want = [w.shape for w in get_weights(new_model(cfg))]
    got = [np.asarray(w).shape for w in found.weights]
    if got != want:
        raise ConfigError(f"--checkpoint {checkpoint}: its weights have shapes {got}, the setting's model "
                          f"{cfg.model} on {cfg.dataset} has {want}")
    return [np.asarray(w) for w in found.weights], int(found.round) + 1


def cell_line(cell: dict) -> str:
    """One cell's result: ``kind attacker defense=s: leaked k/n (<= u), paper k/n, failed f``."""
    from experiments.common import fmt_strength

    what = cell["defense"] + ("" if cell["defense"] == "none" else f"={fmt_strength(cell['strength'])}")
    n = cell["n"]
    ident = ("no decoys" if cell["leaked"] is None else
             f"leaked {cell['leaked']}/{n} (95% bound {cell['leak_upper95']:.1%})")
    return (f"{cell['dataset']} {cell['attacker']} {what}: {ident}, paper criterion {cell['leaked_paper']}/{n}, "
            f"failed {cell['failed']}, mean adjusted SSIM {cell['ssim_adjusted_mean']:.2f}")


def _report(bar, out: Path, group: dict) -> None:
    import json

    from experiments.sweep_cells import sweep_cell_path

    for strength in group["strengths"]:
        path = sweep_cell_path(out, group["kind"], group["defense"], group["attacker"], strength)
        bar.write(cell_line(json.loads(path.read_text())))


def run_groups(groups: list[dict], cfgs: dict[str, dict], folders: dict[str, str], out: Path, args,
               workers: int, quiet: bool) -> None:
    """Every group, in this process (``workers == 0``) or as Ray tasks; a progress bar
    counts finished cells."""
    from tqdm import tqdm

    from fl_defense.task import select_device

    device = str(select_device())
    total = sum(len(g["strengths"]) for g in groups)
    common = dict(out=str(out), n=args.n, image_size=args.image_size, chunk=args.chunk, device=device,
                  decoys=args.decoys, checkpoint=str(Path(args.checkpoint).resolve()) if args.checkpoint else None)
    with tqdm(total=total, unit="cell", file=sys.stderr, disable=quiet) as bar:
        if workers == 0 or not groups:
            for g in groups:
                bar.set_description(f"{g['kind']} {g['attacker']} {g['defense']}")
                bar.update(attack_group(g, cfgs[g["kind"]], folders.get(g["kind"]), **common))
                _report(bar, out, g)
            return
        import ray

        from fl_defense.quiet import quiet_third_party

        quiet_third_party()

        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH"))
                                                          if p),
                            "OMP_NUM_THREADS": "1"}}
        if os.environ.get("RAY_ADDRESS"):
            env["working_dir"] = str(PROJECT_DIR)
            env["excludes"] = [".git", ".flwr", "runs", "docs", ".hypothesis", "__pycache__"]
            ray.init(runtime_env=env, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False,
                     logging_level=logging.WARNING)
        try:
            task = ray.remote(num_cpus=1)(attack_group)
            pending = {task.remote(g, cfgs[g["kind"]], folders.get(g["kind"]), threads=1, **common): g
                       for g in groups}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    g = pending.pop(ref)
                    bar.set_description(f"{g['kind']} {g['attacker']} {g['defense']}")
                    bar.update(ray.get(ref))
                    _report(bar, out, g)
        finally:
            ray.shutdown()
