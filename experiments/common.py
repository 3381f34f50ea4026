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


def write_meta(out, argv=None, program: str = "python run_sim.py", seconds: float | None = None) -> None:
    """``meta.json`` in a result folder: the command line that made it, the date and, when
    given, the command's wall-clock ``seconds``, which the documentation's results pages
    show beside the numbers."""
    import datetime
    import shlex
    import sys
    from pathlib import Path

    from fl_defense.io import write_json

    words = list(sys.argv[1:] if argv is None else argv)
    meta = {"command": f"{program} " + shlex.join(words), "date": datetime.date.today().isoformat()}
    if seconds is not None:
        meta["seconds"] = round(float(seconds), 1)
    write_json(Path(out) / "meta.json", meta)
