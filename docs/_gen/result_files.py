"""What the Results pages are built from: a committed result folder (:class:`Result`, with
its command and date), its CSV and JSON files read, and the blocks every page shows
(provenance, "not yet measured", figures, rates with their bounds)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from _gen.text import esc, pct

NOT_MEASURED = "Not yet measured"


# ------------------------------------------------------------------------------ reading


@dataclass
class Result:
    """One result folder as found on disk (``folder`` is ``None`` when it is missing)."""

    name: str                       # the folder's name under docs/results
    folder: Path | None
    command: str | None = None
    date: str | None = None
    seconds: float | None = None    # wall time of the invocation that wrote it, when recorded
    files: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.folder is not None

    def data(self, filename: str) -> Path | None:
        """The result's file ``filename``, or ``None`` when the folder or the file is missing."""
        path = self.folder / filename if self.folder else None
        return path if path is not None and path.is_file() else None


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def folder_names(results_dir: Path, pattern: str) -> list[str]:
    """The names of the result folders in ``results_dir`` that match the glob ``pattern``,
    sorted; none when ``results_dir`` is missing."""
    if not results_dir.is_dir():
        return []
    return sorted(p.name for p in results_dir.glob(pattern) if p.is_dir())


def find(results_dir: Path, name: str, data_file: str | None = None) -> Result:
    """The result folder ``name``: its command and date from ``meta.json``, else from the
    benchmark's own JSON file (``data_file``), else unknown."""
    folder = results_dir / name
    if not folder.is_dir():
        return Result(name, None)
    res = Result(name, folder, files=sorted(p.name for p in folder.iterdir() if p.is_file()))
    sources = [folder / "meta.json"] + ([folder / data_file] if data_file else [])
    for path in sources:
        if path.is_file() and path.suffix == ".json":
            data = read_json(path)
            if isinstance(data, dict):
                res.command = res.command or data.get("command")
                res.date = res.date or data.get("date")
                res.seconds = res.seconds if res.seconds is not None else data.get("seconds")
    return res


def to_int(value) -> int | None:
    if value in (None, ""):
        return None
    return int(float(value))


def to_float(value) -> float | None:
    if value in (None, ""):
        return None
    v = float(value)
    return None if v != v else v


def fixed(value, digits: int) -> str:
    """A number with ``digits`` decimals; a dash when missing."""
    v = to_float(value)
    return "-" if v is None else f"{v:.{digits}f}"


def same_root_link(res: Result, filename: str) -> str:
    """The path from a results page (``results/<page>.md``) to a file of a result folder."""
    return f"{res.name}/{filename}"


# ------------------------------------------------------------------------------ blocks


def provenance(res: Result) -> str:
    """The command and the date of a result, and its files (links into the site)."""
    lines = []
    lines.append(f"**Date:** {esc(res.date) if res.date else 'not recorded'}")
    lines.append("")
    if res.seconds is not None:
        lines += [f"**Wall time:** {float(res.seconds):.0f} s ({float(res.seconds) / 60:.1f} min, as the command "
                  "measured it; a resumed command counts only the cells it computed)", ""]
    if res.command:
        lines += ["**Command:**", "", "```bash", res.command, "```"]
    else:
        lines.append("**Command:** not recorded")
    data = [f for f in res.files if f != "meta.json" and not f.endswith(".md")]
    if data:
        lines += ["", "**Files:** " + ", ".join(f"[{esc(f)}]({same_root_link(res, f)})" for f in data)]
    return "\n".join(lines) + "\n"


def missing_page(head: list[str], res: Result, command: str) -> str:
    """A page's (or section's) ``head`` followed by the "not yet measured" note for ``res``."""
    return "\n".join(head) + "\n" + not_measured(f"docs/results/{res.name}", command)


def not_measured(what: str, command: str) -> str:
    return (f"!!! note \"{NOT_MEASURED}\"\n\n    No result folder `{what}` is committed yet.  It is made by\n\n"
            f"    ```bash\n    {command}\n    ```\n")


def figure(res: Result, filename: str, caption: str) -> str:
    if filename not in res.files:
        return ""
    return f"![{esc(caption)}]({same_root_link(res, filename)})\n\n*{esc(caption)}*\n"


def rate_ci(k, n, low, high) -> str:
    """``12.5% (1/8; 95% CI 0.3%-52.7%)``."""
    k, n = to_int(k), to_int(n)
    if k is None or not n:
        return "-"
    return f"{pct(k / n)} ({k}/{n}; 95% CI {pct(low)}-{pct(high)})"


def leak_bound(k, n, upper) -> str:
    """``0/64 (<= 5.6%)``: a count with the 95% Clopper-Pearson upper bound of its rate."""
    k, n = to_int(k), to_int(n)
    if k is None or not n:
        return "-"
    return f"{k}/{n} (<= {pct(upper)})"
