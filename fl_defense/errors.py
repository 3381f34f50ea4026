"""The project's error for bad input, and the "did you mean" hint every message shares."""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A configuration key, value or input file is invalid; the message names it.

    Entry points turn it into exit code 2 before any work starts.
    """


def suggest(name: object, choices: Iterable[str], cutoff: float = 0.5) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_int(what: str, value: object, low: int, high: int | None = None) -> None:
    """``ValueError`` naming ``what`` unless ``value`` is an int in ``[low, high]``."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low \
            or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{what} must be an int {bound}; got {value!r}")
