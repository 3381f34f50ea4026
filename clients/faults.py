"""Fault injection for robustness studies, each switched by the config.

``fail-clients`` (these clients raise in ``fit``), ``slow-clients`` (these clients sleep
``slow-seconds`` in ``fit`` before training: stragglers, and a window in which a test kills
the process running one), ``dropout-rate`` (a client drops out of a round with this
probability and answers without an update), ``byzantine-clients`` (the first f client ids
upload a malicious update: ``sign-flip``, ``scaled`` or ``random``).
"""

from __future__ import annotations

import time

import numpy as np

from fl_defense.models import UPDATE_KINDS
from fl_defense.protocol import SeedStream


class InjectedFault(RuntimeError):
    """Raised by a client configured to fail (``fail-clients``)."""


def straggle(seconds: float) -> None:
    """A slow client's delay in ``fit`` (``slow-clients``): sleep ``seconds``."""
    time.sleep(seconds)


def byzantine_payload(payload: list[np.ndarray], kinds: list[str], mode: str, scale: float,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """A malicious client's payload: the honest update sign-flipped, scaled by ``scale``, or
    replaced by Gaussian noise of ``scale`` times the update's own standard deviation.
    BatchNorm statistics are left honest (an attack on them is a different study)."""
    out = []
    for p, k in zip(payload, kinds):
        if k not in UPDATE_KINDS:
            out.append(p)
        elif mode == "sign-flip":
            out.append(-p)
        elif mode == "scaled":
            out.append(p * scale)
        elif mode == "random":
            out.append(rng.normal(0.0, scale * (float(np.std(p)) + 1e-12), size=p.shape).astype(p.dtype))
        else:
            raise ValueError(f"unknown byzantine mode {mode!r}")
    return out


def byzantine_rng(seed: int, client_id: int, server_round: int) -> np.random.Generator:
    """The random stream of a malicious client's ``random`` update in one round."""
    return np.random.default_rng([seed, client_id, server_round, SeedStream.BYZANTINE])


def client_dropped(seed: int, client_id: int, server_round: int, rate: float) -> bool:
    """Whether a client drops out of a round (probability ``rate``, seeded)."""
    return bool(np.random.default_rng([seed, client_id, server_round, SeedStream.DROPOUT]).random() < rate)
