"""Training, evaluation and the client update -- shared by the clients, the server and the
experiments (the "task" of Flower's quickstart layout).

The update a client uploads is built in three steps:

1. ``payload = make_payload(global, local, kinds)``: for trainable entries (kinds
   ``weight`` and ``bn_affine``) the update ``local - global`` (``-lr * gradient`` for one
   SGD step); for BatchNorm buffers (kind ``bn_stat``) the client's statistics themselves.
2. ``defended = apply_defense(spec, payload, kinds, rng)`` (``fl_defense.defenses``).
3. ``upload = payload_to_weights(global, defended, kinds)``: ``global + update`` for
   trainable entries, the statistics as they are for buffers.  Uploads are plain weights,
   so every Flower strategy can aggregate them, and the server recovers the (defended)
   gradient of a one-step client exactly as ``(global - upload) / lr``.

:func:`defended_payload` runs training and steps 1-2 exactly as a client's ``fit`` does;
the client and the experiments that measure leakage both call it, so that a leakage
number is measured on updates made by the code that trains.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fl_defense.config import ExperimentConfig
from fl_defense.defenses import DefenseContext, apply_defense, defense_rng, get_defense
from fl_defense.errors import ConfigError
from fl_defense.models import UPDATE_KINDS, build_model
from fl_defense.partition import PartitionSpec
from fl_defense.protocol import SeedStream


def select_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Every ``state_dict`` entry as a NumPy array (copies), in order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, arrays: Sequence[np.ndarray]) -> None:
    """Load arrays (in ``state_dict`` order) into ``model``; shapes must match."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(arrays):
        raise ValueError(f"expected {len(keys)} arrays, got {len(arrays)}")
    state = OrderedDict((k, torch.as_tensor(np.asarray(a))) for k, a in zip(keys, arrays))
    model.load_state_dict(state, strict=True)


def make_payload(global_w: Sequence[np.ndarray], local_w: Sequence[np.ndarray],
                 kinds: Sequence[str]) -> list[np.ndarray]:
    """Step 1: updates for trainable entries, statistics for BatchNorm buffers."""
    return [np.asarray(l) - np.asarray(g) if k in UPDATE_KINDS else np.asarray(l).copy()
            for g, l, k in zip(global_w, local_w, kinds)]


def payload_to_weights(global_w: Sequence[np.ndarray], payload: Sequence[np.ndarray],
                       kinds: Sequence[str]) -> list[np.ndarray]:
    """Step 3: the weights a client uploads, from its (defended) payload."""
    out = []
    for g, p, k in zip(global_w, payload, kinds):
        g = np.asarray(g)
        out.append((g + p).astype(g.dtype) if k in UPDATE_KINDS else np.asarray(p).astype(g.dtype))
    return out


@lru_cache(maxsize=4)
def _load(dataset: str, data_dir: str, seed: int):
    from fl_defense.datasets import load_dataset

    return load_dataset(dataset, data_dir=data_dir or None, seed=seed)


def load_data(cfg: ExperimentConfig):
    """``(train, test)`` image data sets of the experiment (memoised per process)."""
    return _load(cfg.dataset, cfg.data_dir, cfg.seed)


@lru_cache(maxsize=8)
def _partitions(dataset: str, data_dir: str, seed: int, num_clients: int, partition: PartitionSpec):
    from fl_defense.partition import stored_partition_indices

    train, _ = _load(dataset, data_dir, seed)
    return tuple(stored_partition_indices(train.labels, num_clients, partition.scheme, partition.param, seed))


def client_indices(cfg: ExperimentConfig, client_id: int) -> np.ndarray:
    """Indices (into the training set) of client ``client_id``'s partition."""
    parts = _partitions(cfg.dataset, cfg.data_dir, cfg.seed, cfg.num_clients, cfg.partition)
    return parts[client_id]


def check_run_inputs(cfg: ExperimentConfig) -> None:
    """Make sure a run's inputs are usable before it starts: its data set loads (the files
    of a ``folder:`` set or a torchvision set validated, a bad one named) and the
    partition gives every client at least one example.

    Raises
    ------
    ConfigError : a bad image file, or a partition that cannot be made.
    DatasetUnavailable : a torchvision set is missing, truncated or corrupt.
    """
    from fl_defense.datasets import check_dataset_available

    check_dataset_available(cfg.dataset, cfg.data_dir or None)
    try:
        parts = _partitions(cfg.dataset, cfg.data_dir, cfg.seed, cfg.num_clients, cfg.partition)
    except ValueError as exc:
        raise ConfigError(f"partition {cfg.partition} of {cfg.dataset} among {cfg.num_clients} "
                          f"clients is impossible: {exc}") from None
    empty = [c for c, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise ConfigError(f"partition {cfg.partition} of {cfg.dataset} leaves client(s) "
                          f"{', '.join(map(str, empty[:10]))} without examples ({len(parts)} clients)")


def new_model(cfg: ExperimentConfig, train=None) -> nn.Module:
    """The experiment's model, initialised from the seed (the registry entry's initialisation)."""
    if train is None:
        train, _ = load_data(cfg)
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, train.in_channels, train.image_size, train.num_classes)


def local_batches(num_examples: int, steps: int, batch_size: int, seed: int, client_id: int,
                  server_round: int, images_per_round: int = 0) -> list[np.ndarray]:
    """Positions (into a partition of ``num_examples``) of the batch of every local step.

    Seeded by ``(seed, client, round)``: with ``images_per_round`` = 0 the steps pass over
    the whole partition in shuffled epochs; with ``images_per_round = N`` (config key
    ``images-per-client``, the cross-device shape) the client first draws N distinct
    examples of its partition for this round and the steps pass over those N in shuffled
    epochs.  The same run always trains on the same batches, so the attack's scorer can
    name the images a client trained on without asking the client.
    """
    if num_examples < 1:
        raise ValueError(f"client {client_id} has an empty partition")
    rng = np.random.default_rng([seed, client_id, server_round, SeedStream.BATCHES])
    pool = np.arange(num_examples)
    if 0 < images_per_round < num_examples:
        pool = np.sort(rng.choice(num_examples, size=images_per_round, replace=False))
    order = np.empty(0, dtype=np.int64)
    batches = []
    size = min(batch_size, len(pool))
    for _ in range(steps):
        if len(order) < size:
            order = np.concatenate([order, pool[rng.permutation(len(pool))]])
        batches.append(order[:size])
        order = order[size:]
    return batches


def round_batches(cfg: ExperimentConfig, num_examples: int, client_id: int, server_round: int) -> list[np.ndarray]:
    """:func:`local_batches` of client ``client_id`` in ``server_round`` under ``cfg``."""
    return local_batches(num_examples, cfg.local_steps, cfg.batch_size, cfg.seed, client_id, server_round,
                         cfg.images_per_client)


def examples_used(batches: Sequence[np.ndarray]) -> np.ndarray:
    """The distinct positions a round's batches touch, sorted (what the client reports as
    its number of examples, and what the scoring oracle scores against)."""
    return np.unique(np.concatenate(batches)) if len(batches) else np.empty(0, np.int64)


def train_steps(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                batches: Sequence[np.ndarray], lr: float, device: torch.device) -> float:
    """Plain SGD (no momentum, no weight decay) over the given batches; mean loss."""
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x_all = torch.as_tensor(images)
    y_all = torch.as_tensor(labels)
    losses = []
    for idx in batches:
        x = x_all[idx].to(device)
        y = y_all[idx].to(device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


@torch.no_grad()
def evaluate_model(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                   device: torch.device, batch_size: int = 1000) -> tuple[float, float]:
    """``(mean cross-entropy loss, accuracy)`` of ``model`` in eval mode."""
    model.to(device).eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        x = torch.as_tensor(images[start:start + batch_size]).to(device)
        y = torch.as_tensor(labels[start:start + batch_size]).to(device)
        out = model(x)
        total_loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    n = max(len(labels), 1)
    return total_loss / n, correct / n


def defended_payload(cfg: ExperimentConfig, model: nn.Module, kinds: Sequence[str],
                     global_w: Sequence[np.ndarray], images: np.ndarray, labels: np.ndarray,
                     client_id: int, server_round: int,
                     device: torch.device) -> tuple[list[np.ndarray], float, int]:
    """What a client's ``fit`` computes from the global weights: ``local-steps`` SGD steps
    of ``batch-size`` over its ``images`` (batches seeded by seed, client and round), the
    payload (step 1) and the configured defense (step 2).  Returns ``(payload, mean loss,
    number of distinct examples trained on)``;
    :func:`payload_to_weights` turns the payload into the upload."""
    set_weights(model, global_w)
    batches = round_batches(cfg, len(labels), client_id, server_round)
    context = None
    if get_defense(cfg.defense.name).needs_context:  # the model as it was before training, the round's images
        used = examples_used(batches)
        context = DefenseContext(copy.deepcopy(model).to("cpu"), tuple(model.state_dict()), np.asarray(images)[used],
                                 np.asarray(labels)[used])
    loss = train_steps(model, images, labels, batches, cfg.lr, device)
    payload = make_payload(global_w, get_weights(model), kinds)
    defended = apply_defense(cfg.defense, payload, kinds, defense_rng(cfg.seed, client_id, server_round), context)
    return defended, loss, len(examples_used(batches))
