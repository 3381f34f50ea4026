"""Client-side gradient defenses: the registry, the ``NAME[:VALUE[,FLAG]]`` grammar, and
:func:`apply_defense`.

Each defense is a pure, seeded function from a client's upload payload to the defended
payload.  It never modifies its input and always returns new arrays.  Their definitions
and the maths are in :mod:`fl_defense.defense_ops`.

Payload
-------
A payload is a list of numpy arrays, one per ``model.state_dict()`` entry, with a
parallel list of kinds from :func:`fl_defense.models.state_kinds`:

* ``"weight"`` -- a conv/linear weight or bias; the entry holds the client's *update*
  ``delta = local - global`` (``-lr * gradient`` after one SGD step);
* ``"bn_affine"`` -- a BatchNorm gamma or beta; also an *update* (delta);
* ``"bn_stat"`` -- a BatchNorm buffer (``running_mean``, ``running_var``,
  ``num_batches_tracked``); the entry holds the client's running statistic itself
  (a *value*, not a delta).

The *update entries* are the floating-point entries of kind ``weight`` or ``bn_affine``.
Non-floating arrays (``num_batches_tracked``, int64) are returned unchanged (as copies)
by every defense.

Grammar
-------
``NAME[:VALUE[,FLAG...]]``, e.g. ``none``, ``masking:0.4``, ``masking:0.4,rescale``,
``masking-bn:0.4``, ``clipping:1.0``, ``clipping:1.0,per-layer``, ``pruning:0.9``,
``pruning:0.9,global``, ``noising:0.01``, ``noising-laplace:0.01``, ``dp-gaussian:1.0``.
Names and flags are case-insensitive.  :func:`parse_defense` turns such a text into a
:class:`DefenseSpec`; ``str(spec)`` gives the canonical text back (flags sorted).

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

API
---
``DefenseSpec(name, value, flags, clip)``; ``parse_defense(text, clip=None) -> DefenseSpec``;
``apply_defense(spec, payload, kinds, rng) -> list[np.ndarray]``;
``defense_rng(seed, client_id, round_) -> np.random.Generator``;
``DEFENSES`` (read-only mapping name -> :class:`Defense`); ``get_defense(name) -> Defense``.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from fl_defense import defense_ops as ops
from fl_defense.errors import suggest
from fl_defense.models import KINDS

DefenseFn = Callable[
    [list[np.ndarray], Sequence[str], "float | None", frozenset[str], np.random.Generator],
    list[np.ndarray],
]


@dataclass(frozen=True)
class Defense:
    """A registry entry: a defense's name, implementation and the values it accepts.

    ``func(arrays, kinds, value, flags, rng)`` gets validated inputs and returns new
    arrays.  ``value_name`` is ``None`` for a defense without strength (``none``); else
    the value must be finite and lie in the interval given by ``low``/``high`` and their
    inclusiveness (``value_range`` spells it out).  ``needs_clip``: the defense also takes
    the clipping bound C (``func(..., clip=C)``), bound from the config key ``dp-clip``.
    """

    name: str
    func: DefenseFn
    summary: str
    value_name: str | None
    low: float = 0.0
    low_inclusive: bool = True
    high: float = math.inf
    high_inclusive: bool = False
    flags: frozenset[str] = frozenset()
    example: str = ""
    needs_clip: bool = False

    @property
    def value_range(self) -> str:
        """The accepted values in words, e.g. ``"p in [0, 1)"`` or ``"C > 0"``."""
        if self.value_name is None:
            return "no value"
        if math.isinf(self.high):
            op = ">=" if self.low_inclusive else ">"
            return f"{self.value_name} {op} {self.low:g}"
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        return f"{self.value_name} in {left}{self.low:g}, {self.high:g}{right}"

    def check_value(self, value: object) -> float | None:
        """Return ``value`` as a float (``None`` for ``none``); ``ValueError`` if out of range."""
        if self.value_name is None:
            if value is not None:
                raise ValueError(f"defense {self.name!r} takes no value, got {value!r}")
            return None
        if value is None:
            raise ValueError(f"defense {self.name!r} needs a value ({self.value_range}), "
                             f"e.g. {self.example!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"defense {self.name!r}: {self.value_name} must be a real number, "
                             f"got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"defense {self.name!r}: {self.value_name} must be finite "
                             f"({self.value_range}), got {value!r}")
        above = v >= self.low if self.low_inclusive else v > self.low
        below = v <= self.high if self.high_inclusive else v < self.high
        if not (above and below):
            raise ValueError(f"defense {self.name!r}: {self.value_name} must satisfy "
                             f"{self.value_range}, got {value!r}")
        return v


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
        """The canonical text, e.g. ``masking:0.4,rescale``; ``parse_defense`` inverts it
        (given the same ``clip``: C is the config key ``dp-clip``, not part of the text)."""
        if self.value is None:
            return self.name
        return ",".join([f"{self.name}:{self.value!r}", *sorted(self.flags)])


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
    if not isinstance(name, str):
        raise ValueError(f"defense name must be a string, got {name!r}")
    key = name.strip().lower()
    if key not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}{suggest(key, DEFENSES, cutoff=0.6)}; "
                         f"available: {', '.join(DEFENSES)}")
    return DEFENSES[key]


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
                  rng: np.random.Generator) -> list[np.ndarray]:
    """Apply a defense to a client's upload; returns new arrays, the input is unchanged.

    ``spec`` is a :class:`DefenseSpec` (or its text, parsed by :func:`parse_defense`);
    ``payload`` one array per state-dict entry; ``kinds`` the parallel kinds (see the
    module docstring); ``rng`` the upload's generator (:func:`defense_rng`).  Output arrays
    have the input shapes and dtypes.
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
    if info.needs_clip:
        return info.func(arrays, kinds, spec.value, spec.flags, rng, clip=spec.clip)
    return info.func(arrays, kinds, spec.value, spec.flags, rng)


DEFENSES: Mapping[str, Defense] = MappingProxyType({d.name: d for d in (
    Defense("none", ops.identity, "identity", None),
    Defense("masking", ops.masking,
            "zero every floating coordinate (running statistics included) w.p. p",
            "p", 0.0, True, 1.0, False, frozenset({"rescale"}), "masking:0.4"),
    Defense("masking-bn", ops.masking_bn,
            "zero every update coordinate (weights, BN gamma/beta) w.p. p; "
            "BN running statistics uploaded as computed",
            "p", 0.0, True, 1.0, False, frozenset({"rescale"}), "masking-bn:0.4"),
    Defense("clipping", ops.clipping, "scale the update by min(1, C / ||u||_2)",
            "C", 0.0, False, math.inf, False, frozenset({"per-layer"}), "clipping:1.0"),
    Defense("pruning", ops.pruning, "zero the floor(p*n) smallest-magnitude update entries",
            "p", 0.0, True, 1.0, False, frozenset({"global"}), "pruning:0.9"),
    Defense("noising", ops.noising, "add Gaussian N(0, sigma^2) noise to the update",
            "sigma", 0.0, True, math.inf, False, frozenset(), "noising:0.01"),
    Defense("noising-laplace", ops.noising_laplace, "add Laplace(0, b) noise to the update",
            "b", 0.0, True, math.inf, False, frozenset(), "noising-laplace:0.01"),
    Defense("dp-gaussian", ops.dp_gaussian,
            "the Gaussian mechanism: clip the update to L2 norm C (dp-clip), add N(0, (Z C)^2)",
            "Z", 0.0, False, math.inf, False, frozenset(), "dp-gaussian:1.0", needs_clip=True),
)})
"""The registry, name -> :class:`Defense` (read-only)."""
