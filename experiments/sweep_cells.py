"""The sweep's cells on disk: one finished (data set, attacker, defense, strength) cell is
its per-image rows (``.jsonl``), its images (``.npz``) and, written last, its summary
(``.json``), so a cell counts as done only when all three are there; and the thresholds
read off the cells."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from experiments.common import fmt_strength
from fl_defense.io import read_jsonl, write_json


def sweep_cell_path(out: Path, dataset: str, defense: str, attacker: str, strength: float) -> Path:
    return out / "cells" / dataset / attacker / f"{defense}={fmt_strength(strength)}.json"


def save_sweep_cell(out: Path, ds: str, attacker: str, defense: str, strength: float, rows: list[dict],
                    truths, recons, adjusted, setting: dict, spec: str) -> None:
    """One finished cell: per-image rows (jsonl), images (npz), then its summary (json) last,
    so that a cell counts as done only when all three are on disk.  The summary records the
    setting the updates were made in and the defense as applied (``spec``)."""
    from fl_defense.io import atomic_write_bytes, write_jsonl

    path = sweep_cell_path(out, ds, defense, attacker, strength)
    write_jsonl(path.with_suffix(".jsonl"), rows)
    buf = io.BytesIO()
    np.savez_compressed(buf, truths=truths, recons=recons, adjusted=adjusted)
    atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())
    leaked = [r["leaked"] for r in rows]
    known = [r for r in rows if r["label"] >= 0]
    write_json(path, {"dataset": ds, "attacker": attacker, "defense": defense, "strength": strength,
                      "spec": spec, "setting": setting, "clients": len({r["client"] for r in rows}),
                      "n": len(rows), "leak_rate": float(np.mean(leaked)),
                      "ssim_mean": float(np.mean([r["ssim"] for r in rows])),
                      "ssim_adjusted_mean": float(np.mean([r["ssim_adjusted"] for r in rows])),
                      "label_acc": float(np.mean([r["label"] == r["label_pred"] for r in known])) if known else None,
                      "seconds": float(sum(r["seconds"] for r in rows))})


def load_sweep_cells(out: Path, leak_threshold: float | None = None) -> list[dict]:
    """Every finished cell's summary; with ``leak_threshold`` the leak rate is recomputed from
    the stored per-image adjusted SSIM, so a sweep can be re-read at another threshold
    without attacking again."""
    cells = []
    for path in sorted((out / "cells").glob("*/*/*.json")):
        cell = json.loads(path.read_text())
        if leak_threshold is not None:
            rows = read_jsonl(path.with_suffix(".jsonl"))
            cell["leak_rate"] = float(np.mean([r["ssim_adjusted"] >= leak_threshold for r in rows]))
        cells.append(cell)
    return cells


def thresholds_from_cells(cells: list[dict], grids: dict[str, list[float]], max_leak_rate: float) -> list[dict]:
    """Per (dataset, attacker, defense): the weakest strength whose leak rate is at most
    ``max_leak_rate`` (``None`` when no strength of the grid reaches it), the strengths
    tested (weakest first, ``;``-separated, so that the training grid can train around the
    threshold) and the setting the cells were measured in (one column per key)."""
    rows = []
    keyed = {(c["dataset"], c["attacker"], c["defense"], c["strength"]): c for c in cells}
    combos = sorted({(c["dataset"], c["attacker"], c["defense"]) for c in cells if c["defense"] != "none"})
    for ds, attacker, defense in combos:
        found = None
        for strength in grids.get(defense, []):
            cell = keyed.get((ds, attacker, defense, strength))
            if cell is not None and cell["leak_rate"] <= max_leak_rate:
                found = cell
                break
        base = keyed.get((ds, attacker, "none", 0.0))
        rows.append({"dataset": ds, "attacker": attacker, "defense": defense,
                     "threshold": found["strength"] if found else None,
                     "leak_rate": found["leak_rate"] if found else None,
                     "ssim_mean": found["ssim_mean"] if found else None,
                     "ssim_adjusted_mean": found["ssim_adjusted_mean"] if found else None,
                     "n": found["n"] if found else None,
                     "undefended_leak_rate": base["leak_rate"] if base else None,
                     "strongest_tested": grids.get(defense, [None])[-1],
                     "tested": ";".join(fmt_strength(v) for v in grids.get(defense, [])),
                     # the setting's other keys: the kind of data is the row's key (cells written
                     # before the sweep recorded a folder's kind carry the run's data set there)
                     **{key: value for key, value in (base or found or {}).get("setting", {}).items()
                        if key != "dataset"}})
    return rows


def strengths_around(tested: list[float], threshold: float | None, extra: int = 1) -> list[float]:
    """The strengths the training grid trains a defense at: ``extra`` weaker than the
    threshold, the threshold, ``extra`` stronger (from the tested ones, weakest first).
    Without a threshold (no tested strength stopped the attack) the strongest
    ``2 extra + 1``; at either end of the grid, what is there."""
    if not tested:
        return []
    if threshold is None:
        return tested[-(2 * extra + 1):]
    i = min(range(len(tested)), key=lambda k: abs(tested[k] - threshold))
    return tested[max(0, i - extra): i + extra + 1]
