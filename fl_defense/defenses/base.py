"""What a defense is: the registry entry (:class:`Defense`), what a client hands a defense
that needs more than its payload (:class:`DefenseContext`), and helpers shared by the
defenses' maths.

Payload
-------
A payload is a list of numpy arrays, one per ``model.state_dict()`` entry, with a parallel
list of kinds from :func:`fl_defense.models.state_kinds`:

* ``"weight"`` -- a conv/linear weight or bias; the entry holds the client's *update*
  ``delta = local - global`` (``-lr * gradient`` after one SGD step);
* ``"bn_affine"`` -- a BatchNorm gamma or beta; also an *update* (delta);
* ``"bn_stat"`` -- a BatchNorm buffer (``running_mean``, ``running_var``,
  ``num_batches_tracked``); the entry holds the client's running statistic itself (a
  *value*, not a delta).

The *update entries* are the floating-point entries of kind ``weight`` or ``bn_affine``.
Non-floating arrays (``num_batches_tracked``, int64) are returned unchanged (as copies) by
every defense.  Noise, masks and scale factors are computed in float64 and the result is
cast back to each array's dtype.

A defense function
------------------
``func(arrays, kinds, value, flags, rng, **bound)`` gets validated inputs (see
:func:`fl_defense.defenses.apply_defense`) and returns new arrays of the same shapes and
dtypes; it never modifies its input.  ``bound`` holds ``clip=C`` for a defense with
``needs_clip`` and ``context=`` a :class:`DefenseContext` for a defense with
``needs_context``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from fl_defense.models import UPDATE_KINDS

__all__ = ["Defense", "DefenseContext", "DefenseFn", "AXES"]

DefenseFn = Callable[..., list[np.ndarray]]

#: How a defense's strength axis is drawn and read: ``linear`` or ``log`` scale.
AXES = ("linear", "log")


@dataclass(frozen=True)
class DefenseContext:
    """What a client knows besides its payload, for a defense that needs it (Soteria).

    Attributes
    ----------
    model : the model at the global weights the client started from (used functionally;
        a defense must not change it).
    state_keys : the ``state_dict`` keys, parallel to the payload.
    images : ``float32 [N, C, H, W]``, the images the client trained on this round.
    labels : ``int64 [N]``.
    """

    model: Any
    state_keys: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Defense:
    """A registry entry: everything the code asks about one defense.

    Attributes
    ----------
    name : the name users write (lower case).
    func : the defense itself (see the module docstring).
    summary : one line: what it does to the upload (help texts, ``run_sim.py defenses``).
    value_name : the strength's symbol (``"p"``, ``"C"`` ...); ``None`` for ``none``.
    low, low_inclusive, high, high_inclusive : the accepted strengths.
    flags : option names it takes (``masking:0.4,rescale``).
    example : a valid text, for messages.
    needs_clip : it also takes C, the L2 bound of the update (config key ``dp-clip``).
    needs_context : it also takes a :class:`DefenseContext` (the client's model and images).
    integer : the strength must be a whole number (bits).
    aware_objective : the gradient-matching objective of an attacker who knows the defense
        (a name of :data:`attacks.objectives.OBJECTIVES`; checked where attacks are built).
    grid : the default strengths of the threshold sweep, weakest first.
    axis : ``"linear"`` or ``"log"``: how the strength axis is drawn.
    stronger : ``"higher"`` when a larger value protects more, ``"lower"`` when a smaller
        one does (clipping's C, quantisation's bits).
    default_experiment : swept and trained by default (``sweep``, ``train``).
    batchnorm_variant : the defense a model with BatchNorm trains with instead of this one
        (``masking`` -> ``masking-bn``), or ``None``.
    reference : where the defense comes from.
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
    needs_context: bool = False
    integer: bool = False
    aware_objective: str = "l2"
    grid: tuple[float, ...] = ()
    axis: str = "linear"
    stronger: str = "higher"
    default_experiment: bool = False
    batchnorm_variant: str | None = None
    reference: str = ""

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise ValueError(f"defense {self.name!r}: axis must be one of {AXES}, got {self.axis!r}")
        if self.stronger not in ("higher", "lower"):
            raise ValueError(f"defense {self.name!r}: stronger must be 'higher' or 'lower', got {self.stronger!r}")
        for v in self.grid:
            self.check_value(v)
        object.__setattr__(self, "grid", tuple(float(v) for v in self.grid))

    @property
    def value_range(self) -> str:
        """The accepted values in words, e.g. ``"p in [0, 1)"`` or ``"C > 0"``."""
        if self.value_name is None:
            return "no value"
        whole = "a whole number " if self.integer else ""
        if math.isinf(self.high):
            op = ">=" if self.low_inclusive else ">"
            return f"{whole}{self.value_name} {op} {self.low:g}"
        left = "[" if self.low_inclusive else "("
        right = "]" if self.high_inclusive else ")"
        return f"{whole}{self.value_name} in {left}{self.low:g}, {self.high:g}{right}"

    @property
    def axis_label(self) -> str:
        """The strength axis's label in figures."""
        if self.value_name is None:
            return ""
        return self.value_name + (" (stronger to the right)" if self.stronger == "lower" else "")

    def check_value(self, value: object) -> float | None:
        """Return ``value`` as a float (``None`` for ``none``); ``ValueError`` if out of range."""
        if self.value_name is None:
            if value is not None:
                raise ValueError(f"defense {self.name!r} takes no value, got {value!r}")
            return None
        if value is None:
            raise ValueError(f"defense {self.name!r} needs a value ({self.value_range}), e.g. {self.example!r}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"defense {self.name!r}: {self.value_name} must be a real number, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"defense {self.name!r}: {self.value_name} must be finite ({self.value_range}), "
                             f"got {value!r}")
        above = v >= self.low if self.low_inclusive else v > self.low
        below = v <= self.high if self.high_inclusive else v < self.high
        if not (above and below) or (self.integer and v != int(v)):
            raise ValueError(f"defense {self.name!r}: {self.value_name} must satisfy {self.value_range}, "
                             f"got {value!r}")
        return v


# ----------------------------------------------------------------------------- helpers


def is_float(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.floating))


def is_update(a: np.ndarray, kind: str) -> bool:
    """Whether a payload entry holds an update (a floating entry of an update kind)."""
    return kind in UPDATE_KINDS and is_float(a)


def cast(x: object, like: np.ndarray) -> np.ndarray:
    """A new array of ``like``'s dtype and shape holding ``x``."""
    return np.array(x, dtype=like.dtype).reshape(like.shape)


def l2(arrays: Sequence[np.ndarray]) -> float:
    """The L2 norm of arrays concatenated, in float64."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays))


def update_indices(arrays: Sequence[np.ndarray], kinds: Sequence[str]) -> list[int]:
    """Positions of the update entries."""
    return [i for i, (a, k) in enumerate(zip(arrays, kinds)) if is_update(a, k)]
