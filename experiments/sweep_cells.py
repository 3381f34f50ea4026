"""The sweep's cells on disk, and the thresholds read off them.

One finished (data set, attacker, defense, strength) cell is its per-image rows
(``.jsonl``), its reconstruction record (``.npz``, :func:`fl_defense.scoring.save_record`:
``run_sim.py rescore`` reads it) and, written last, its summary (``.json``), so a cell counts
as done only when all three are there.

Counts and bounds
-----------------
Every summary holds ``n`` (private images scored), ``leaked`` (identified among the decoys;
``None`` without a pool), ``leaked_paper`` (adjusted SSIM >= the leak threshold),
``failed`` (images of clients whose attack failed: not leaked under either criterion), the
rates and ``leak_upper95`` / ``leak_upper95_paper``: the upper ends of the 95%
Clopper-Pearson intervals (:func:`fl_defense.stats.leak_upper95`).

The threshold rule
------------------
A defense's threshold against an attacker is the weakest tested strength whose leak rate is
at most ``max_leak_rate`` (default 0: no image leaked) **and stays so at every stronger
strength tested**; a strength after which a stronger one leaks again is not a threshold.
It is read under both criteria (``threshold`` and ``threshold_paper``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from experiments.common import fmt_strength
from fl_defense.io import read_jsonl, write_json
from fl_defense.stats import leak_upper95

CRITERIA = {"": "leaked", "_paper": "leaked_paper"}  # column suffix -> the per-image flag


def sweep_cell_path(out: Path, dataset: str, defense: str, attacker: str, strength: float) -> Path:
    return out / "cells" / dataset / attacker / f"{defense}={fmt_strength(strength)}.json"


def cell_counts(rows: list[dict]) -> dict:
    """``n``, ``failed`` and, per criterion, the leaked count, rate and 95% upper bound."""
    n = len(rows)
    out = {"n": n, "failed": sum(bool(r["failed"]) for r in rows)}
    for suffix, flag in CRITERIA.items():
        values = [r[flag] for r in rows]
        if any(v is None for v in values):
            out.update({f"leaked{suffix}": None, f"leak_rate{suffix}": None, f"leak_upper95{suffix}": None})
            continue
        k = int(sum(bool(v) for v in values))
        out.update({f"leaked{suffix}": k, f"leak_rate{suffix}": k / n if n else None,
                    f"leak_upper95{suffix}": leak_upper95(k, n)})
    return out


def save_sweep_cell(out: Path, ds: str, attacker: str, defense: str, strength: float, rows: list[dict],
                    record: dict, setting: dict, spec: str, decoys: str | None) -> None:
    """One finished cell: per-image rows (jsonl), the reconstruction record (npz), then its
    summary (json) last, so that a cell counts as done only when all three are on disk.
    ``record`` holds the arguments of :func:`fl_defense.scoring.save_record` but its path.
    The summary records the setting the updates were made in, the defense as applied
    (``spec``) and the decoy pool."""
    from fl_defense.io import write_jsonl
    from fl_defense.scoring import save_record

    path = sweep_cell_path(out, ds, defense, attacker, strength)
    write_jsonl(path.with_suffix(".jsonl"), rows)
    save_record(path.with_suffix(".npz"), **record)
    known = [r for r in rows if r["label"] >= 0]
    write_json(path, {"dataset": ds, "attacker": attacker, "defense": defense, "strength": strength,
                      "spec": spec, "setting": setting, "decoys": decoys,
                      "clients": len({(r["client"], r.get("round")) for r in rows}), **cell_counts(rows),
                      "ssim_mean": float(np.mean([r["ssim"] for r in rows])),
                      "ssim_adjusted_mean": float(np.mean([r["ssim_adjusted"] for r in rows])),
                      "label_acc": float(np.mean([r["label"] == r["label_pred"] for r in known])) if known else None,
                      "seconds": float(sum(r["seconds"] for r in rows))})


def rejudge(rows: list[dict], leak_threshold: float) -> list[dict]:
    """The rows with both criteria read again at ``leak_threshold`` (from the stored adjusted
    SSIMs, the decoys' and the failed flags, by :func:`fl_defense.scoring.judge`: no attack
    is run again)."""
    from fl_defense.scoring import judge

    out = []
    for r in rows:
        def value(key):
            return np.nan if r.get(key) is None else float(r[key])

        leaked, paper = judge(np.array([r["ssim_adjusted"]]), np.array([value("ssim_decoy_max")]),
                              np.array([value("ssim_public_max")]), np.array([bool(r["failed"])]),
                              np.array([bool(r["matched"])]), leak_threshold, r["leaked"] is not None)
        out.append({**r, "leaked_paper": bool(paper[0]), "leaked": None if leaked is None else bool(leaked[0])})
    return out


def load_sweep_cells(out: Path, leak_threshold: float | None = None) -> list[dict]:
    """Every finished cell's summary; with ``leak_threshold`` its counts are recomputed from
    the stored rows (:func:`rejudge`), so a sweep can be re-read at another threshold without
    attacking again."""
    cells = []
    for path in sorted((out / "cells").glob("*/*/*.json")):
        cell = json.loads(path.read_text())
        if leak_threshold is not None:
            cell.update(cell_counts(rejudge(read_jsonl(path.with_suffix(".jsonl")), leak_threshold)))
        cells.append(cell)
    return cells


def weakest_stopping(cells_by_strength: list[dict | None], max_leak_rate: float, suffix: str = "") -> int | None:
    """The position of the threshold among strengths ordered weakest first (``None``: none):
    the weakest strength whose leak rate is at most ``max_leak_rate`` and stays so at every
    stronger one measured (a strength not measured breaks the run)."""
    found = None
    for i in range(len(cells_by_strength) - 1, -1, -1):
        cell = cells_by_strength[i]
        rate = None if cell is None else cell.get(f"leak_rate{suffix}")
        if rate is None or rate > max_leak_rate:
            break
        found = i
    return found


def thresholds_from_cells(cells: list[dict], grids: dict[str, list[float]], max_leak_rate: float) -> list[dict]:
    """Per (dataset, attacker, defense), under both criteria: the threshold (the rule of the
    module docstring; ``None`` when no strength of the grid holds), its cell's ``n``,
    ``leaked``, ``failed``, rate and ``leak_upper95``; the strengths tested (weakest first,
    ``;``-separated, so that the training grid can train around the threshold), the
    undefended leak rate, and the setting the cells were measured in (one column per key)."""
    rows = []
    keyed = {(c["dataset"], c["attacker"], c["defense"], c["strength"]): c for c in cells}
    combos = sorted({(c["dataset"], c["attacker"], c["defense"]) for c in cells if c["defense"] != "none"})
    for ds, attacker, defense in combos:
        grid = grids.get(defense, [])
        ordered = [keyed.get((ds, attacker, defense, s)) for s in grid]
        base = keyed.get((ds, attacker, "none", 0.0))
        row = {"dataset": ds, "attacker": attacker, "defense": defense}
        for suffix in CRITERIA:
            i = weakest_stopping(ordered, max_leak_rate, suffix)
            cell = ordered[i] if i is not None else None
            row.update({f"threshold{suffix}": grid[i] if i is not None else None,
                        f"n{suffix}": cell["n"] if cell else None,
                        f"leaked{suffix}": cell[f"leaked{suffix}"] if cell else None,
                        f"failed{suffix}": cell["failed"] if cell else None,
                        f"leak_rate{suffix}": cell[f"leak_rate{suffix}"] if cell else None,
                        f"leak_upper95{suffix}": cell[f"leak_upper95{suffix}"] if cell else None,
                        f"undefended_leak_rate{suffix}": base.get(f"leak_rate{suffix}") if base else None})
        found = ordered[grid.index(row["threshold"])] if row["threshold"] is not None else None
        row.update({"ssim_mean": found["ssim_mean"] if found else None,
                    "ssim_adjusted_mean": found["ssim_adjusted_mean"] if found else None,
                    "decoys": (base or found or {}).get("decoys"),
                    "strongest_tested": grid[-1] if grid else None,
                    "tested": ";".join(fmt_strength(v) for v in grid),
                    # the setting's other keys: the kind of data is the row's key
                    **{key: value for key, value in (base or found or {}).get("setting", {}).items()
                       if key != "dataset"}})
        rows.append(row)
    return rows
