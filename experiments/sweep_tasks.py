"""The sweep's work: its targets (clients and their images), the attack of one group of
cells, and running the groups as tasks on Ray or in this process.

A group is one (kind of data, attacker, defense) with the strengths still to do; all of
them are attacked in one vectorised call and every finished cell is written on its own
(atomically), so a killed sweep resumes by cell whichever way the groups ran.

Ray: ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` when it is set (the code
travels as the job's working directory) and otherwise starts Ray on this machine with
``--workers`` CPUs, one per task; each task runs torch on one thread.
"""

from __future__ import annotations

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
    """One client of the sweep: its id (seeds its batches and its defense, as in a run) and
    the images it holds (its partition; a group of files for a folder), with their names."""

    client_id: int
    images: np.ndarray
    labels: np.ndarray
    names: list[str]


@dataclass
class Targets:
    clients: list[ClientImages]
    shape: Any  # what fl_defense.task.new_model needs: in_channels, image_size, num_classes


def load_targets(cfg: ExperimentConfig, n: int, folder: str | None, image_size: int | None) -> Targets:
    """Enough clients for ``n`` private images: the first clients of the run's partition of
    the training split, or consecutive groups of ``images-per-client`` files of ``folder``.
    Raises :class:`ConfigError` (naming the value) when there are not enough."""
    per = cfg.images_per_client
    want = math.ceil(n / per)
    if folder is None:
        from fl_defense.task import client_indices, load_data

        if want > cfg.num_clients:
            raise ConfigError(f"--n {n} needs {want} clients of {per} images but the setting has "
                              f"num-clients={cfg.num_clients}")
        train, _ = load_data(cfg)
        clients = []
        for cid in range(want):
            idx = client_indices(cfg, cid)
            clients.append(ClientImages(cid, train.images[idx], train.labels[idx],
                                        [f"{cfg.dataset}[train {i}]" for i in idx]))
        return Targets(clients, train)
    from experiments.targets import folder_targets

    images, labels, names, num_classes = folder_targets(Path(folder), None, image_size, cfg.seed)
    groups = len(images) // per
    if groups < 1:
        raise ConfigError(f"--images {folder} holds {len(images)} images, fewer than images-per-client={per}")
    groups = min(groups, want)
    clients = [ClientImages(c, images[c * per:(c + 1) * per], labels[c * per:(c + 1) * per],
                            names[c * per:(c + 1) * per]) for c in range(groups)]

    @dataclass
    class Shape:
        in_channels: int
        image_size: int
        num_classes: int

    return Targets(clients, Shape(int(images.shape[1]), int(images.shape[2]), int(num_classes)))


def attack_group(group: dict, cfg_flat: dict, folder: str | None, out: str, n: int, image_size: int | None,
                 chunk: int, device: str, threads: int | None = None) -> int:
    """Attack every strength of one group and write its cells; returns the cells written.

    Every client of the targets plays once per strength: its upload is made by
    :func:`experiments.client_attack.attack_clients` through the client's own code path
    (round 1 of the run, from the run's initial global model, its batches and its defense
    seeded by seed, client and round as in ``fit``), and all strengths' uploads are
    inverted in one vectorised call."""
    import torch

    from experiments.client_attack import attack_clients
    from experiments.setting import defense_as_applied, setting_of
    from fl_defense.defenses import parse_defense
    from fl_defense.task import get_weights, new_model

    if threads:
        torch.set_num_threads(threads)
    cfg = replace(parse_run_config(cfg_flat), attacker=group["attacker"])
    targets = load_targets(cfg, n, folder, image_size)
    name = defense_as_applied(group["defense"], cfg.model)
    specs = [parse_defense("none" if name == "none" else f"{name}:{s}") for s in group["strengths"]]
    clients = targets.clients
    images = np.concatenate([c.images for c in clients])
    labels = np.concatenate([c.labels for c in clients])
    names = [nm for c in clients for nm in c.names]
    starts = np.cumsum([0] + [len(c.labels) for c in clients])
    own = [np.arange(starts[i], starts[i + 1]) for i in range(len(clients))]
    global_w = get_weights(new_model(cfg, targets.shape))
    scores, rows, _ = attack_clients(cfg, images, labels, int(targets.shape.num_classes),
                                     groups=[g for _ in specs for g in own],
                                     defense=[sp for sp in specs for _ in clients],
                                     global_weights=global_w, device=device,
                                     client_ids=[c.client_id for _ in specs for c in clients],
                                     server_round=1, chunk=chunk)
    m = len(clients)
    setting = {**setting_of(cfg), "dataset": group["kind"]}  # a folder's kind, not the run's data set
    for j, (strength, spec) in enumerate(zip(group["strengths"], specs)):
        keep = np.flatnonzero(scores.client // m == j)
        part = [dict(rows[i], image=names[rows[i]["image"]]) for i in keep]
        save_sweep_cell(Path(out), group["kind"], group["attacker"], group["defense"], strength, part,
                        scores.truths[keep], scores.recons[keep], scores.adjusted[keep], setting, str(spec))
    return len(specs)


def run_groups(groups: list[dict], cfgs: dict[str, dict], folders: dict[str, str], out: Path, args,
               workers: int, quiet: bool) -> None:
    """Every group, in this process (``workers == 0``) or as Ray tasks; a progress bar
    counts finished cells."""
    from tqdm import tqdm

    from fl_defense.task import select_device

    device = str(select_device())
    total = sum(len(g["strengths"]) for g in groups)
    common = dict(out=str(out), n=args.n, image_size=args.image_size, chunk=args.chunk, device=device)
    with tqdm(total=total, unit="cell", file=sys.stderr, disable=quiet) as bar:
        if workers == 0 or not groups:
            for g in groups:
                bar.set_description(f"{g['kind']} {g['attacker']} {g['defense']}")
                bar.update(attack_group(g, cfgs[g["kind"]], folders.get(g["kind"]), **common))
            return
        import ray

        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_DIR), os.environ.get("PYTHONPATH"))
                                                          if p),
                            "OMP_NUM_THREADS": "1"}}
        if os.environ.get("RAY_ADDRESS"):
            env["working_dir"] = str(PROJECT_DIR)
            env["excludes"] = [".git", ".flwr", "runs", "docs", ".hypothesis", "__pycache__"]
            ray.init(runtime_env=env, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False)
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
        finally:
            ray.shutdown()
