"""What the attack benchmarks share: a row computed once and read back on the next
invocation, the one-line summary of a row, and the command line a result records."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Sequence


def cached_row(path: Path, make: Callable[[], dict]) -> dict:
    """The row in ``path`` when an earlier invocation wrote it, else ``make()``, written
    there atomically (so an interrupted benchmark resumes where it stopped)."""
    from fl_defense.io import write_json

    if path.exists():
        return json.loads(path.read_text())
    row = make()
    write_json(path, row)
    return row


def row_summary(row: dict) -> str:
    """Both criteria's counts of a scored row (:func:`benchmarks.leak_map.run_cell`), the
    identified share's 95% interval, label accuracy and seconds per client, in one line."""
    return (f"identified {row['leaked']}/{row['n']} ({row['ci95_low']:.0%}-{row['ci95_high']:.0%}), "
            f"paper criterion {row['leaked_paper']}/{row['n']}, labels {row['label_acc']:.2f}, "
            f"{row['seconds_per_client']:.1f} s per client")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """``python -m benchmarks.<module>`` and its arguments (``sys.argv``'s when ``argv`` is ``None``)."""
    return f"python -m benchmarks.{module} " + " ".join(argv if argv is not None else sys.argv[1:])
