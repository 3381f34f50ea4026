"""Reading a sweep's ``thresholds.csv`` (what ``train --thresholds FILE`` trains at).

The file is the one :mod:`experiments.sweep_report` writes: a CSV with a header row and
at least the columns :data:`REQUIRED_COLUMNS`; one row per (data set, defense, attacker),
``threshold`` empty where no strength of the grid stopped the attacker.
:func:`read_thresholds` validates all of it before anything runs and raises
:class:`~fl_defense.errors.ConfigError` naming the file, the line and the problem: a
missing, empty, non-text or non-CSV file, missing columns, a ragged row, an unknown
defense, a threshold that is not a number or that the defense refuses (``masking:1.5``),
or two rows for the same defense with different thresholds.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fl_defense.defenses import parse_defense
from fl_defense.errors import ConfigError

REQUIRED_COLUMNS = ("dataset", "defense", "attacker", "threshold")


def _text(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"thresholds file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"thresholds file {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read thresholds file {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"thresholds file {path} is empty")
    if b"\0" in data:
        raise ConfigError(f"thresholds file {path} is not a CSV file (it holds binary data)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"thresholds file {path} is not a CSV file (not UTF-8 text)") from None


def read_thresholds(path: str | Path, dataset: str, attacker: str) -> dict[str, float]:
    """The threshold of every defense of ``dataset`` against ``attacker`` in a sweep's
    ``thresholds.csv``: ``{defense name: strength}``, rows with an empty threshold left out
    (validated as :func:`threshold_rows` does)."""
    return {r["defense"]: r["threshold"] for r in threshold_rows(path)
            if r["dataset"] == dataset and r["attacker"] == attacker and r["threshold"] is not None}


def threshold_rows(path: str | Path) -> list[dict]:
    """Every row of a sweep's ``thresholds.csv`` as a mapping of its columns (text), with
    ``threshold`` as a float (``None`` when empty).

    Every row is validated, not only the ones a caller asks for, so that a damaged file is
    refused whichever setting is read from it.

    Raises
    ------
    ConfigError : the file is missing, unreadable, empty, not UTF-8 CSV text, lacks one of
        :data:`REQUIRED_COLUMNS`, has a row with a wrong number of fields, an unknown
        defense, a threshold that is not a finite number or not valid for its defense, or
        two different thresholds for one (data set, defense, attacker).  The message
        names the file (and the line).
    """
    path = Path(path)
    text = _text(path)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        table = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise ConfigError(f"thresholds file {path} is not a valid CSV file ({exc})") from None
    header = [h.strip() for h in table[0]] if table else []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ConfigError(f"thresholds file {path} lacks the column(s) {', '.join(missing)} "
                          f"(its header: {','.join(header)!r}; a sweep's thresholds.csv has "
                          f"{', '.join(REQUIRED_COLUMNS)})")
    if len(table) < 2:
        raise ConfigError(f"thresholds file {path} has a header but no rows")
    seen: dict[tuple[str, str, str], float | None] = {}
    out: list[dict] = []
    for line, row in enumerate(table[1:], start=2):
        where = f"thresholds file {path}, line {line}"
        if len(row) != len(header):
            raise ConfigError(f"{where}: {len(row)} fields where the header has {len(header)}")
        cell = {name: row[i].strip() for i, name in enumerate(header)}
        value = _threshold(where, cell["defense"], cell["threshold"])
        key = (cell["dataset"], cell["defense"], cell["attacker"])
        if key in seen and seen[key] != value:
            raise ConfigError(f"{where}: a second threshold for defense {key[1]!r}, dataset {key[0]!r}, "
                              f"attacker {key[2]!r} ({cell['threshold']!r} after {seen[key]!r})")
        seen[key] = value
        out.append({**cell, "threshold": value, "line": line})
    return out


def tested_strengths(row: dict, where: str) -> list[float]:
    """The strengths the sweep tested for a row's defense (column ``tested``, ``;``-separated,
    weakest first); :class:`ConfigError` when the column is missing or not numbers."""
    text = row.get("tested")
    if not text:
        raise ConfigError(f"{where}: no 'tested' strengths (a thresholds.csv of this version's sweep lists them)")
    try:
        return [float(v) for v in text.split(";") if v.strip()]
    except ValueError:
        raise ConfigError(f"{where}: 'tested' must be ;-separated numbers, got {text!r}") from None


def _threshold(where: str, defense: str, text: str) -> float | None:
    """The threshold of one row (``None`` when empty), checked against its defense by the
    defense grammar itself (``parse_defense``: known name, value in range)."""
    if not defense:
        raise ConfigError(f"{where}: the defense is empty")
    try:
        float(text) if text else None
    except ValueError:
        raise ConfigError(f"{where}: threshold {text!r} of {defense!r} is not a number") from None
    try:
        parse_defense(f"{defense}:{text}" if text else defense)
    except ValueError as exc:
        if not (text == "" and "needs a value" in str(exc)):  # empty: nothing stopped the attacker
            raise ConfigError(f"{where}: {exc}") from None
    return float(text) if text else None
