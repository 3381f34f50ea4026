"""Client-side gradient defenses: masking, clipping, pruning, noising.

Each defense is a pure, seeded function from a client's upload payload to the defended
payload.  It never modifies its input and always returns new arrays.

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
``pruning:0.9,global``, ``noising:0.01``, ``noising-laplace:0.01``.  Names and flags are
case-insensitive.  :func:`parse_defense` turns such a text into a :class:`DefenseSpec`;
``str(spec)`` gives the canonical text back (flags sorted).

Definitions
-----------
==========================  ============================================================
``none``                    identity.
``masking:p``               random gradient masking (Kim & Park, 2024): every coordinate
                            of every floating entry -- *including the BatchNorm running
                            statistics* -- is zeroed independently with probability p,
                            p in [0, 1) (coordinate zeroed iff ``u < p``, ``u`` uniform
                            in [0, 1)); a fresh mask for every upload.  Flag ``rescale``
                            multiplies the survivors by 1/(1-p) (off by default).  This
                            naive variant zeroes running statistics (values!), which
                            breaks inference: a zeroed ``running_var`` makes eval-mode
                            BatchNorm divide by sqrt(eps) (a gain of ~316 at eps=1e-5).
``masking-bn:p``            BatchNorm-aware random gradient masking (see below).
``clipping:C``              C > 0: the update entries are scaled together by
                            ``min(1, C / ||u||_2)``, ``||u||_2`` the L2 norm of all
                            update entries concatenated (Abadi et al., 2016; McMahan et
                            al., 2018).  Flag ``per-layer``: the same, per array.
``pruning:p``               p in [0, 1): in every update array of n entries, the
                            k = floor(p*n) entries of smallest magnitude are zeroed (Zhu
                            et al., 2019, Sec. 5).  p is read as its shortest decimal
                            representation, so 0.29 * 100 gives k = 29 exactly.  Ties in
                            magnitude: the entry with the lower flat (C-order) index is
                            pruned first.  Flag ``global``: one ranking over all update
                            entries concatenated in payload order, n their total count.
``noising:sigma``           sigma >= 0: add i.i.d. Gaussian N(0, sigma^2) noise to every
                            update coordinate (Zhu et al., 2019, Sec. 5).
``noising-laplace:b``       b >= 0: add i.i.d. Laplace(0, b) noise (density
                            exp(-|x|/b) / 2b, std b*sqrt(2)) to every update coordinate.
==========================  ============================================================

Only plain ``masking`` touches ``bn_stat`` entries; every other defense returns them equal
to the input.  Noise, masks and scale factors are computed in float64 and the result is
cast back to each array's dtype.

BatchNorm-aware masking (``masking-bn:p``)
------------------------------------------
Kim & Park (2024) do not publish their treatment of BatchNorm; this is ours.

1. Conv/linear weights and biases (``weight``): masked exactly as in ``masking:p``.
2. BatchNorm gamma and beta (``bn_affine``): masked the same way.  Their uploads are
   deltas; their gradients (dL/dbeta_c = sum of dL/dy, dL/dgamma_c = sum of dL/dy * x_hat
   over the batch and positions of channel c) carry information about the batch, so
   exempting them would leave an unmasked channel, while a zeroed delta only keeps that
   channel's gamma/beta at its global value for one round -- harmless to inference.
3. BatchNorm running statistics (``running_mean``, ``running_var``): never masked;
   uploaded as computed.  They are values, not gradients; zeroing them corrupts the
   aggregated model's eval-mode normalisation.  They are therefore *not* protected: they
   reveal each channel's batch mean and variance of the activations (not pixels).
4. Integer buffers (``num_batches_tracked``): untouched.

The random stream is consumed exactly as in ``masking:p`` (a uniform draw for every
floating coordinate, running statistics included, the draws for running statistics being
discarded), so ``masking:p`` and ``masking-bn:p`` with the same generator state zero the
same update coordinates: the two variants differ only in the running statistics.

Randomness
----------
Every upload gets a fresh generator from :func:`defense_rng` ``(seed, client_id,
round_)`` via :class:`numpy.random.SeedSequence`, so masks and noise are reproducible yet
differ across clients and rounds.

References
----------
* Kim, J. & Park, S. (2024). Random Gradient Masking as a Defensive Measure to Deep
  Leakage in Federated Learning. arXiv:2408.08430.
* Zhu, L., Liu, Z. & Han, S. (2019). Deep Leakage from Gradients. NeurIPS.
* Abadi, M. et al. (2016). Deep Learning with Differential Privacy. ACM CCS.
* McMahan, H. B., Ramage, D., Talwar, K. & Zhang, L. (2018). Learning Differentially
  Private Recurrent Language Models. ICLR.
* Ioffe, S. & Szegedy, C. (2015). Batch Normalization. ICML.

API
---
``DefenseSpec(name, value, flags)``; ``parse_defense(text) -> DefenseSpec``;
``apply_defense(spec, payload, kinds, rng) -> list[np.ndarray]``;
``defense_rng(seed, client_id, round_) -> np.random.Generator``;
``DEFENSES`` (read-only mapping name -> :class:`Defense`); ``available_defenses()``;
``get_defense(name) -> Defense``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import operator
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

KINDS = ("weight", "bn_affine", "bn_stat")
"""The payload kinds understood by the defenses (from :func:`fl_defense.models.state_kinds`)."""

UPDATE_KINDS = frozenset({"weight", "bn_affine"})
"""Kinds whose entries hold an update (a delta) rather than a value."""

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
    inclusiveness (``value_range`` spells it out).
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
    touches_bn_stat: bool = False

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
    ``{"rescale"}``.  Construction validates all three (``ValueError`` naming the bad
    value) and normalises ``value`` to ``float`` and ``flags`` to a lower-case frozenset.
    """

    name: str
    value: float | None = None
    flags: frozenset[str] = frozenset()

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
                                 f"{_suggest(flag, info.flags)}; its flags: {allowed}")
        object.__setattr__(self, "flags", frozenset(flags))

    def __str__(self) -> str:
        """The canonical text, e.g. ``masking:0.4,rescale``; ``parse_defense`` inverts it."""
        if self.value is None:
            return self.name
        return ",".join([f"{self.name}:{self.value!r}", *sorted(self.flags)])


def _suggest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def available_defenses() -> tuple[str, ...]:
    """Names of the registered defenses, in registry order."""
    return tuple(DEFENSES)


def get_defense(name: str) -> Defense:
    """The registry entry for ``name`` (case-insensitive); ``ValueError`` with a suggestion."""
    if not isinstance(name, str):
        raise ValueError(f"defense name must be a string, got {name!r}")
    key = name.strip().lower()
    if key not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}{_suggest(key, DEFENSES)}; "
                         f"available: {', '.join(DEFENSES)}")
    return DEFENSES[key]


def parse_defense(text: str) -> DefenseSpec:
    """Parse ``NAME[:VALUE[,FLAG...]]`` into a validated :class:`DefenseSpec`.

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
    if not sep:
        return DefenseSpec(info.name, None, frozenset())
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
        return DefenseSpec(info.name, value, frozenset(flag_texts))
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
    return info.func(arrays, kinds, spec.value, spec.flags, rng)


# ----------------------------------------------------------------------------- helpers


def _is_float(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def _is_update(a: np.ndarray, kind: str) -> bool:
    return kind in UPDATE_KINDS and _is_float(a)


def _cast(x: object, like: np.ndarray) -> np.ndarray:
    """A new array of ``like``'s dtype and shape holding ``x``."""
    return np.array(x, dtype=like.dtype).reshape(like.shape)


# ---------------------------------------------------------------------------- defenses


def _none(arrays, kinds, value, flags, rng):
    return [a.copy() for a in arrays]


def _masking(arrays, kinds, p, flags, rng, *, bn_aware=False):
    scale = 1.0 / (1.0 - p) if "rescale" in flags else 1.0
    out = []
    for a, k in zip(arrays, kinds):
        if not _is_float(a):
            out.append(a.copy())
            continue
        drop = rng.random(a.shape) < p  # drawn for bn_stat too: same stream in both variants
        if bn_aware and k == "bn_stat":
            out.append(a.copy())
            continue
        kept = a.astype(np.float64) * scale if scale != 1.0 else a
        out.append(_cast(np.where(drop, 0.0, kept), a))
    return out


def _masking_bn(arrays, kinds, p, flags, rng):
    return _masking(arrays, kinds, p, flags, rng, bn_aware=True)


def _l2(arrays: Sequence[np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def _clipping(arrays, kinds, c, flags, rng):
    out = [a.copy() for a in arrays]
    idx = [i for i, (a, k) in enumerate(zip(arrays, kinds)) if _is_update(a, k)]
    for i in idx:
        if not np.all(np.isfinite(arrays[i])):
            raise ValueError(f"clipping: payload entry {i} has non-finite values")
    groups = [[i] for i in idx] if "per-layer" in flags else [idx]
    for group in groups:
        norm = _l2([arrays[i] for i in group])
        if norm > c:
            for i in group:
                out[i] = _cast(arrays[i].astype(np.float64) * (c / norm), arrays[i])
    return out


def _prune_count(p: float, n: int) -> int:
    """floor(p * n), p read as its shortest decimal representation (exact arithmetic)."""
    return int((Decimal(repr(float(p))) * n).to_integral_value(rounding=ROUND_FLOOR))


def _smallest(magnitudes: np.ndarray, p: float) -> np.ndarray:
    """Boolean mask of the floor(p*n) smallest entries; ties: lower index first."""
    k = _prune_count(p, magnitudes.size)
    mask = np.zeros(magnitudes.size, dtype=bool)
    mask[np.argsort(magnitudes, kind="stable")[:k]] = True
    return mask


def _pruning(arrays, kinds, p, flags, rng):
    out = [a.copy() for a in arrays]
    idx = [i for i, (a, k) in enumerate(zip(arrays, kinds)) if _is_update(a, k)]
    if not idx:
        return out
    if "global" in flags:
        mags = np.concatenate([np.abs(arrays[i].astype(np.float64)).ravel() for i in idx])
        masks = np.split(_smallest(mags, p), np.cumsum([arrays[i].size for i in idx])[:-1])
    else:
        masks = [_smallest(np.abs(arrays[i]).ravel(), p) for i in idx]
    for i, mask in zip(idx, masks):
        flat = out[i].reshape(-1)
        flat[mask] = 0
        out[i] = flat.reshape(arrays[i].shape)
    return out


def _noising(arrays, kinds, sigma, flags, rng, *, laplace=False):
    out = []
    for a, k in zip(arrays, kinds):
        if not _is_update(a, k):
            out.append(a.copy())
            continue
        noise = (rng.laplace(0.0, sigma, size=a.shape) if laplace
                 else rng.normal(0.0, sigma, size=a.shape))
        out.append(_cast(a.astype(np.float64) + noise, a))
    return out


def _noising_laplace(arrays, kinds, b, flags, rng):
    return _noising(arrays, kinds, b, flags, rng, laplace=True)


DEFENSES: Mapping[str, Defense] = MappingProxyType({d.name: d for d in (
    Defense("none", _none, "identity", None),
    Defense("masking", _masking,
            "zero every floating coordinate (running statistics included) w.p. p",
            "p", 0.0, True, 1.0, False, frozenset({"rescale"}), "masking:0.4",
            touches_bn_stat=True),
    Defense("masking-bn", _masking_bn,
            "zero every update coordinate (weights, BN gamma/beta) w.p. p; "
            "BN running statistics uploaded as computed",
            "p", 0.0, True, 1.0, False, frozenset({"rescale"}), "masking-bn:0.4"),
    Defense("clipping", _clipping, "scale the update by min(1, C / ||u||_2)",
            "C", 0.0, False, math.inf, False, frozenset({"per-layer"}), "clipping:1.0"),
    Defense("pruning", _pruning, "zero the floor(p*n) smallest-magnitude update entries",
            "p", 0.0, True, 1.0, False, frozenset({"global"}), "pruning:0.9"),
    Defense("noising", _noising, "add Gaussian N(0, sigma^2) noise to the update",
            "sigma", 0.0, True, math.inf, False, frozenset(), "noising:0.01"),
    Defense("noising-laplace", _noising_laplace, "add Laplace(0, b) noise to the update",
            "b", 0.0, True, math.inf, False, frozenset(), "noising-laplace:0.01"),
)})
"""The registry, name -> :class:`Defense` (read-only)."""
