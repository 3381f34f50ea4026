"""The ``NAME[:VALUE[,FLAG...]]`` grammar, the validated :class:`DefenseSpec`, the per-upload
randomness and :func:`apply_defense`.

Grammar
-------
``NAME[:VALUE[,FLAG...]]``, e.g. ``none``, ``masking:0.4``, ``masking:0.4,rescale``,
``masking-bn:0.4``, ``clipping:1.0``, ``clipping:1.0,per-layer``, ``pruning:0.9``,
``pruning:0.9,global``, ``noising:0.01``, ``noising-laplace:0.01``, ``dp-gaussian:1.0``,
``quantisation:4``, ``soteria:0.5``.  Names and flags are case-insensitive; the names are
those of the registry (:data:`fl_defense.defenses.DEFENSES`).  :func:`parse_defense` turns
such a text into a :class:`DefenseSpec`; ``str(spec)`` gives the canonical text back
(flags sorted).

Bound parameters
----------------
``dp-gaussian:Z`` also needs C, the L2 bound of the whole update.  C is not part of the
text: it is the config key ``dp-clip``, which :func:`fl_defense.config.parse_run_config`
binds into the spec when it parses the config (``parse_defense(text, clip=C)``), so that
every code path that applies the defense -- the client's ``fit``, the attack and sweep
commands -- gets the same C from the one validated spec.  A spec of a defense that needs
C cannot be built without it, and one that does not need it cannot carry one.

Randomness
----------
Every upload gets a fresh generator from :func:`defense_rng` ``(seed, client_id,
round_)`` via :class:`numpy.random.SeedSequence`, so masks and noise are reproducible yet
differ across clients and rounds.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from fl_defense.defenses.base import Defense, DefenseContext
from fl_defense.defenses.catalogue import DEFENSES
from fl_defense.errors import suggest
from fl_defense.models import KINDS


@dataclass(frozen=True)
class DefenseSpec:
    """A validated defense choice: registry ``name``, strength ``value``, option ``flags``.

    ``value`` is p (masking, pruning), C (clipping), sigma (noising) or b
    (noising-laplace); ``None`` for ``none``.  ``flags`` is a set of option names, e.g.
    ``{"rescale"}``.  ``clip`` is C, the L2 bound of the update, for a defense that needs
    it (``dp-gaussian``; from the config key ``dp-clip``), else ``None``.  Construction
    validates all four (``ValueError`` naming the bad value) and normalises ``value`` and
    ``clip`` to ``float`` and ``flags`` to a lower-case frozenset.
    """

    name: str
    value: float | None = None
    flags: frozenset[str] = frozenset()
    clip: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"defense name must be a string, got {self.name!r}")
        info = get_defense(self.name)
        object.__setattr__(self, "name", info.name)
        object.__setattr__(self, "value", info.check_value(self.value))
        if isinstance(self.flags, str) or not isinstance(self.flags, Iterable):
            raise ValueError(f"defense flags must be a set of strings, got {self.flags!r}")
        flags = []
        for flag in self.flags:
            if not isinstance(flag, str):
                raise ValueError(f"defense flag must be a string, got {flag!r}")
            flags.append(flag.strip().lower())
        for flag in flags:
            if flag not in info.flags:
                allowed = ", ".join(sorted(info.flags)) or "none"
                raise ValueError(f"defense {info.name!r} has no flag {flag!r}"
                                 f"{suggest(flag, info.flags, cutoff=0.6)}; its flags: {allowed}")
        object.__setattr__(self, "flags", frozenset(flags))
        object.__setattr__(self, "clip", _check_clip(info, self.clip))

    def __str__(self) -> str:
        """The canonical text, e.g. ``masking:0.4,rescale`` or ``quantisation:4``;
        ``parse_defense`` inverts it (given the same ``clip``: C is the config key
        ``dp-clip``, not part of the text)."""
        if self.value is None:
            return self.name
        value = str(int(self.value)) if get_defense(self.name).integer else repr(self.value)
        return ",".join([f"{self.name}:{value}", *sorted(self.flags)])


def _check_clip(info: Defense, clip: object) -> float | None:
    if not info.needs_clip:
        if clip is not None:
            raise ValueError(f"defense {info.name!r} takes no clipping bound, got clip={clip!r}")
        return None
    if clip is None:
        raise ValueError(f"defense {info.name!r} needs C, the L2 bound of the update "
                         f"(config key dp-clip)")
    if isinstance(clip, bool) or not isinstance(clip, numbers.Real) or not math.isfinite(float(clip)) \
            or float(clip) <= 0:
        raise ValueError(f"defense {info.name!r}: the clipping bound C (dp-clip) must be a finite "
                         f"number > 0, got {clip!r}")
    return float(clip)


def get_defense(name: str) -> Defense:
    """The registry entry for ``name`` (case-insensitive); ``ValueError`` with a suggestion."""
    return DEFENSES.get(name)


def parse_defense(text: str, clip: float | None = None) -> DefenseSpec:
    """Parse ``NAME[:VALUE[,FLAG...]]`` into a validated :class:`DefenseSpec`.

    ``clip`` is bound into the spec of a defense that needs it (``dp-gaussian``) and
    ignored for the others, so the config can pass ``dp-clip`` whatever the defense.

    Examples: ``"none"``, ``"masking:0.4"``, ``"masking:0.4,rescale"``,
    ``"clipping:1.0,per-layer"``, ``"pruning:0.9,global"``, ``"noising-laplace:0.01"``.
    Raises ``ValueError`` naming the bad part: an unknown name (with the nearest valid
    name), a missing or non-numeric value, a value out of range (NaN included), an
    unknown or empty flag.
    """
    if not isinstance(text, str):
        raise ValueError(f"defense must be a string like 'masking:0.4', got {text!r}")
    name, sep, rest = text.strip().partition(":")
    info = get_defense(name)
    clip = clip if info.needs_clip else None
    if not sep:
        return DefenseSpec(info.name, None, frozenset(), clip)
    if info.value_name is None:
        raise ValueError(f"defense {info.name!r} takes no value or flags, got {text!r}")
    value_text, *flag_texts = (part.strip() for part in rest.split(","))
    if not value_text:
        raise ValueError(f"defense {text!r}: missing value after ':' ({info.value_range}), "
                         f"e.g. {info.example!r}")
    try:
        value = float(value_text)
    except ValueError:
        raise ValueError(f"defense {text!r}: value {value_text!r} is not a number "
                         f"({info.value_range})") from None
    if any(not flag for flag in flag_texts):
        raise ValueError(f"defense {text!r}: empty flag")
    try:
        return DefenseSpec(info.name, value, frozenset(flag_texts), clip)
    except ValueError as err:
        raise ValueError(f"{err} (in {text!r})") from None


def defense_rng(seed: int, client_id: int, round_: int) -> np.random.Generator:
    """A fresh generator for one upload, seeded by ``SeedSequence([seed, client_id, round_])``.

    All three must be non-negative integers; the same triple gives the same stream, and
    different clients or rounds give independent streams.
    """
    entropy = []
    for label, x in (("seed", seed), ("client_id", client_id), ("round_", round_)):
        if isinstance(x, bool):
            raise ValueError(f"{label} must be a non-negative integer, got {x!r}")
        try:
            i = operator.index(x)
        except TypeError:
            raise ValueError(f"{label} must be a non-negative integer, got {x!r}") from None
        if i < 0:
            raise ValueError(f"{label} must be a non-negative integer, got {x!r}")
        entropy.append(i)
    return np.random.default_rng(np.random.SeedSequence(entropy))


def apply_defense(spec: DefenseSpec | str, payload: Sequence[np.ndarray], kinds: Sequence[str],
                  rng: np.random.Generator, context: DefenseContext | None = None) -> list[np.ndarray]:
    """Apply a defense to a client's upload; returns new arrays, the input is unchanged.

    Parameters
    ----------
    spec : a :class:`DefenseSpec` (or its text, parsed by :func:`parse_defense`).
    payload : one array per state-dict entry (see :mod:`fl_defense.defenses.base`).
    kinds : the parallel kinds.
    rng : the upload's generator (:func:`defense_rng`).
    context : the client's model and images, for a defense that needs them
        (``needs_context``, e.g. ``soteria``); ignored by the others.

    Returns
    -------
    list of numpy.ndarray : the defended payload, with the input shapes and dtypes.
    """
    if isinstance(spec, str):
        spec = parse_defense(spec)
    if not isinstance(spec, DefenseSpec):
        raise ValueError(f"spec must be a DefenseSpec or its text, got {spec!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {rng!r}")
    arrays = [np.asarray(a) for a in payload]
    kinds = list(kinds)
    if len(arrays) != len(kinds):
        raise ValueError(f"payload has {len(arrays)} arrays but kinds has {len(kinds)} entries")
    for i, k in enumerate(kinds):
        if k not in KINDS:
            raise ValueError(f"kinds[{i}] = {k!r} is not one of {', '.join(KINDS)}")
    info = DEFENSES[spec.name]
    bound = {}
    if info.needs_clip:
        bound["clip"] = spec.clip
    if info.needs_context:
        if not isinstance(context, DefenseContext):
            raise ValueError(f"defense {info.name!r} needs the client's model and images (a DefenseContext), "
                             f"got {context!r}")
        if len(context.state_keys) != len(arrays):
            raise ValueError(f"the context names {len(context.state_keys)} state entries, the payload has "
                             f"{len(arrays)}")
        bound["context"] = context
    return info.func(arrays, kinds, spec.value, spec.flags, rng, **bound)
