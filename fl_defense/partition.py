"""Federated partitioning: how the training set is split among the clients.

:class:`PartitionSpec` is the typed form of the ``partition`` config value (``iid``,
``dirichlet:ALPHA`` or ``pathological:K``), parsed once; :func:`partition_indices` splits
example indices with the flwr-datasets partitioners on an in-memory Hugging Face
``datasets.Dataset``.

References
----------
Hsu, Qi & Brown (2019). Measuring the effects of non-identical data distribution for
federated visual classification. arXiv:1909.06335. (Dirichlet label skew)
Li, Diao, Chen & He (2022). Federated learning on non-IID data silos: an experimental
study. ICDE. arXiv:2102.02079. (pathological, k classes per client)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_defense.errors import ConfigError, check_int, suggest

PARTITION_SCHEMES = ("iid", "dirichlet", "pathological")


@dataclass(frozen=True)
class PartitionSpec:
    """How the training set is split: ``iid``, ``dirichlet:ALPHA`` or ``pathological:K``."""

    scheme: str = "iid"
    param: float | None = None

    @classmethod
    def parse(cls, text: str) -> "PartitionSpec":
        name, _, value = str(text).partition(":")
        name = name.strip()
        if name not in PARTITION_SCHEMES:
            raise ConfigError(f"unknown partition {text!r}; choose iid, dirichlet:ALPHA or "
                              f"pathological:K{suggest(name, PARTITION_SCHEMES)}")
        if name == "iid":
            if value:
                raise ConfigError(f"partition 'iid' takes no value, got {text!r}")
            return cls("iid", None)
        if not value:
            raise ConfigError(f"partition {name!r} needs a value, e.g. "
                              f"{'dirichlet:0.5' if name == 'dirichlet' else 'pathological:2'}; got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"partition value {value!r} in {text!r} is not a number") from None
        if name == "dirichlet":
            if not (number > 0 and math.isfinite(number)):
                raise ConfigError(f"dirichlet alpha must be > 0, got {value!r}")
            return cls("dirichlet", number)
        if number != int(number) or number < 1:
            raise ConfigError(f"pathological K (classes per client) must be an integer >= 1, got {value!r}")
        return cls("pathological", int(number))

    def __str__(self) -> str:
        if self.param is None:
            return self.scheme
        value = int(self.param) if self.scheme == "pathological" else self.param
        return f"{self.scheme}:{value}"



def partition_indices(labels: np.ndarray, num_partitions: int, scheme: str,
                      param: float | int | None = None, seed: int = 0, *,
                      min_partition_size: int | None = None) -> list[np.ndarray]:
    """Split example indices ``0..N-1`` among ``num_partitions`` clients.

    Schemes (all through flwr-datasets partitioners):

    ``iid``
        ``IidPartitioner`` on a seeded permutation: sizes differ by at most one.
        ``param`` must be ``None``.
    ``dirichlet``
        ``DirichletPartitioner(alpha=param)`` (Hsu et al., 2019): for each class a
        share vector ``p ~ Dir(alpha * 1)`` over the clients splits that class's
        examples.  Small ``alpha`` -> few classes per client; large -> close to iid.
        Each client must get at least ``min_partition_size`` examples (default
        ``max(1, min(10, N // (2 * num_partitions)))``); flwr-datasets redraws up to 10
        times, then this raises ``ValueError``.
    ``pathological``
        ``PathologicalPartitioner(num_classes_per_partition=param,
        class_assignment_mode="first-deterministic")`` (Li et al., 2022): client ``i``
        gets class ``i mod C`` and ``k - 1`` more drawn at random; each class's examples
        are split evenly among the clients that hold it.  With ``num_partitions < C``
        the classes no client draws are left out (flwr-datasets warns).

    Every scheme first permutes the examples with ``seed``, so which examples a client
    gets depends on the seed even where the class assignment does not.  Returns one
    sorted int64 index array per client; they never overlap, and they cover every
    index except in the pathological case above.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array; got {y.dtype} shape {y.shape}")
    n = int(y.shape[0])
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; choose one of "
                         f"{', '.join(PARTITION_SCHEMES)}")
    check_int("num_partitions", num_partitions, 1, max(n, 1))
    if n == 0:
        raise ValueError("labels is empty; nothing to partition")
    check_int("seed", seed, 0)
    if scheme != "iid" and y.min() < 0:
        raise ValueError(f"{scheme} partitioning needs labels >= 0; got {int(y.min())}")

    from flwr_datasets.partitioner import (DirichletPartitioner, IidPartitioner,
                                           PathologicalPartitioner)

    if scheme != "dirichlet" and min_partition_size is not None:
        raise ValueError(f"min_partition_size={min_partition_size!r} applies to the "
                         f"dirichlet scheme only, not {scheme!r}")

    perm_seed, part_seed = np.random.SeedSequence(seed).generate_state(2)
    perm = np.random.default_rng(perm_seed).permutation(n)
    part_seed = int(part_seed)
    if scheme == "iid":
        if param is not None:
            raise ValueError(f"iid partitioning takes no parameter; got param={param!r}")
        partitioner: Any = IidPartitioner(num_partitions=num_partitions)
    elif scheme == "dirichlet":
        if isinstance(param, bool) \
                or not isinstance(param, (int, float, np.integer, np.floating)) \
                or not np.isfinite(param) or param <= 0:
            raise ValueError(f"dirichlet partitioning needs alpha > 0 (finite) as param; "
                             f"got param={param!r}")
        if min_partition_size is None:
            min_partition_size = max(1, min(10, n // (2 * num_partitions)))
        check_int("min_partition_size", min_partition_size, 0, n // num_partitions)
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions, partition_by="label", alpha=float(param),
            min_partition_size=int(min_partition_size), self_balancing=False, shuffle=True,
            seed=part_seed)
    else:
        num_classes = int(np.unique(y).size)
        if isinstance(param, bool) or not isinstance(param, (int, np.integer)) \
                or not 1 <= param <= num_classes:
            raise ValueError(f"pathological partitioning needs k (classes per client) in "
                             f"1..{num_classes} as param; got param={param!r}")
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions, partition_by="label",
            num_classes_per_partition=int(param),
            class_assignment_mode="first-deterministic", shuffle=True, seed=part_seed)

    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"label": y[perm].astype(np.int64),
                                             "idx": perm.astype(np.int64)})
    try:
        parts = [np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64))
                 for i in range(num_partitions)]
    except ValueError as exc:
        extra = f", min_partition_size={min_partition_size}" if scheme == "dirichlet" else ""
        raise ValueError(f"{scheme} partitioning of {n} examples into "
                         f"num_partitions={num_partitions} with param={param!r}{extra} "
                         f"failed: {exc}") from exc
    return parts


#: The environment variable naming the folder of the on-disk partition memo
#: (:func:`stored_partition_indices`); unset or empty: :data:`DEFAULT_CACHE_DIR`.
CACHE_ENV = "FL_DEFENSE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/fl-defense"


def partition_key(labels: np.ndarray, num_partitions: int, scheme: str, param, seed: int) -> str:
    """A digest of everything :func:`partition_indices` reads: the labels, the arguments and
    the versions of flwr-datasets and numpy (whose generators draw the partitions)."""
    import hashlib
    from importlib.metadata import version

    y = np.ascontiguousarray(np.asarray(labels))
    h = hashlib.sha256()
    h.update(repr((str(y.dtype), y.shape, int(num_partitions), str(scheme),
                   None if param is None else float(param), int(seed),
                   version("flwr-datasets"), np.__version__)).encode())
    h.update(y.tobytes())
    return h.hexdigest()[:32]


def stored_partition_indices(labels: np.ndarray, num_partitions: int, scheme: str,
                             param: float | int | None = None, seed: int = 0,
                             cache_dir: str | None = None) -> list[np.ndarray]:
    """:func:`partition_indices`, memoised on disk.

    The partitions of one (labels, arguments, library versions) are computed once on a
    machine and read back by every later process (a run's launcher, its ServerApp and
    each ClientApp), which then need not import flwr-datasets and Hugging Face
    ``datasets``.  The memo is a folder ``partitions/`` under
    ``cache_dir`` (default: the environment's :data:`CACHE_ENV`, else
    :data:`DEFAULT_CACHE_DIR`), one ``.npz`` per :func:`partition_key`, written atomically;
    a file that cannot be read, or does not hold ``num_partitions`` disjoint index arrays
    within the labels, is computed again and replaced.  Where the folder cannot be
    written, the partitions are computed and returned all the same."""
    import io
    import os
    import zipfile
    from pathlib import Path

    from fl_defense.io import atomic_write_bytes

    root = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR
    path = Path(root).expanduser() / "partitions" / f"{partition_key(labels, num_partitions, scheme, param, seed)}.npz"
    n = int(np.asarray(labels).shape[0])
    try:
        with np.load(path, allow_pickle=False) as stored:
            parts = [np.asarray(stored[f"p{i}"], dtype=np.int64) for i in range(num_partitions)]
        flat = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if flat.size == np.unique(flat).size and (flat.size == 0 or (flat.min() >= 0 and flat.max() < n)):
            return parts
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass
    parts = partition_indices(labels, num_partitions, scheme, param, seed)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"p{i}": part for i, part in enumerate(parts)})
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError:
        pass  # a read-only cache: computed every time
    return parts


def sample_positions(seed: int, server_round: int, available: int, k: int, *stream: int) -> np.ndarray:
    """The seeded client sampling rule: ``k`` distinct positions of ``0..available-1``
    (clients ordered by partition id), sorted, drawn with
    ``numpy.random.default_rng([seed, round, SeedStream.SAMPLING, *stream])``.  The
    server's sampler (``strategies/sampling.py``) and the plain-PyTorch reference of
    ``benchmarks/bench_federation.py`` both use it, so the same seed samples the same
    clients in both."""
    from fl_defense.protocol import SeedStream

    if not 0 <= k <= available:
        raise ValueError(f"cannot sample {k} of {available} clients")
    rng = np.random.default_rng([seed, server_round, SeedStream.SAMPLING, *stream])
    return np.sort(rng.choice(available, size=k, replace=False))
