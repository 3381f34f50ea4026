"""Small parsers and formats the experiment commands share."""

from __future__ import annotations

from fl_defense.config import ConfigError


def fmt_strength(v: float) -> str:
    """A strength as the tables and file names write it (``0.1``, ``1e-05``)."""
    return f"{v:g}"


def parse_list(text: str, what: str) -> list[str]:
    """Comma-separated items of a flag; :class:`ConfigError` naming the flag when empty."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} is empty, got {text!r}")
    return items
