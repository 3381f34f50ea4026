"""What the server and its clients agree on: message keys and seed streams.

Message keys
------------
Flower carries a client's answer to ``fit`` as ``(parameters, num_examples, metrics)`` and
the server's instructions as a config mapping.  The keys used in those mappings are named
here once; every sender and reader imports them.

Seed streams
------------
Every random choice of a run is drawn from ``numpy.random.default_rng([seed, ..., tag])``
with a tag naming the stream, so that two streams never share numbers and a choice can be
re-derived anywhere (the scoring oracle re-derives a client's batches this way, without
asking the client).  The defense's own stream is ``SeedSequence([seed, client, round])``
(:func:`fl_defense.defenses.defense_rng`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Mapping

# server -> client (fit and evaluate config)
SERVER_ROUND = "server-round"

# client -> server (get_properties): the client's partition id, which the server learns
# once per node to sample clients by partition id (Flower's node ids are random)
PARTITION_ID = "partition-id"

# client -> server (fit metrics)
CLIENT_ID = "client-id"
DROPPED = "dropped"
TRAIN_LOSS = "train-loss"
MALICIOUS = "malicious"
FIT_SECONDS = "fit-seconds"
ACCURACY = "accuracy"


class SeedStream(IntEnum):
    """The last entry of a seed list: which random stream it is."""

    BATCHES = 1        # a client's local batches, per (client, round)
    BYZANTINE = 2      # a malicious client's random update, per (client, round)
    DROPOUT = 4        # whether a client drops out, per (client, round)
    TARGETS = 7        # which test images the attack commands pick
    FOLDER_LABELS = 11  # labels drawn for unlabelled image files
    SAMPLING = 13      # which clients the server samples, per round


def client_id_of(metrics: Mapping[str, Any] | None) -> int | None:
    """The partition id a client reported in its fit metrics, or ``None`` when absent."""
    if not metrics or CLIENT_ID not in metrics:
        return None
    return int(metrics[CLIENT_ID])


def client_order(metrics: Mapping[str, Any] | None, node: str = "") -> tuple[int, int, str]:
    """Sort key that puts answers in client-id order, answers without an id last."""
    cid = client_id_of(metrics)
    return (0, cid, node) if cid is not None else (1, 0, node)


def was_dropped(metrics: Mapping[str, Any] | None) -> bool:
    """Whether a client answered that it dropped out of the round."""
    return bool(int((metrics or {}).get(DROPPED, 0)))
