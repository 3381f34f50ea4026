"""The training grid's results page: ``docs/results/grid/`` (``final_accuracy.csv``,
``hook.csv`` and the figures of ``python run_sim.py train``), its final accuracy per panel
beside the sweep's leak at the same strength, and how many of those leak entries equal the
cells of the sweep published under Experiment 1."""

from __future__ import annotations

from pathlib import Path

from _gen.result_files import (figure, find, fixed, folder_names, leak_bound, missing_page, provenance, read_csv,
                               read_json, to_float)
from _gen.text import esc, indent, pct, table

GRID_COMMAND = "python run_sim.py train --out docs/results/grid --thresholds docs/results/sweep-<kind>/thresholds.csv ..."


def _panels(rows: list[dict]) -> list[tuple[str, str]]:
    return [(p, a) for p in dict.fromkeys(r["partition"] for r in rows)
            for a in dict.fromkeys(r["aggregation"] for r in rows)]


def _against_published_sweep(results_dir: Path, res, rows: list[dict]) -> list[str]:
    """A sentence comparing the grid's round-1 leak columns with the cells of the sweep
    published under Experiment 1 for the grid's data set (the folder ``sweep-*`` whose
    command has no ``--checkpoint``), when that sweep is not the one the grid read."""
    config = res.folder / "config.json"
    if not config.is_file():
        return []
    grid_cfg = read_json(config)
    dataset = (grid_cfg.get("setting") or {}).get("dataset")
    for name in folder_names(results_dir, "sweep-*"):
        sweep = find(results_dir, name)
        cells_path = sweep.data("cells.csv")
        if cells_path is None or "--checkpoint" in (sweep.command or ""):
            continue
        cells = {(c["attacker"], c["defense"], float(c["strength"])): c for c in read_csv(cells_path)
                 if c.get("dataset") == dataset}
        if not cells:
            continue
        same = total = 0
        for r in {r["spec"]: r for r in rows}.values():
            for attacker in ("naive", "aware"):
                c = cells.get((attacker, r["defense"], float(r["strength"])))
                if c is None or not r.get(f"leaked_{attacker}"):
                    continue
                total += 1
                same += c["leaked"] == r[f"leaked_{attacker}"] and c["n"] == r[f"n_{attacker}"]
        if total == 0 or same == total:
            return []
        return [f"The round-1 leak columns are read from the cells of the sweep named in the command above "
                f"(`--thresholds`); {same} of its {total} (defense, strength, attacker) entries "
                f"equal the cell at the same strength of the sweep published under [Experiment 1](sweeps.md), "
                f"which is another run.", ""]
    return []


def grid_page(results_dir: Path) -> str:
    res = find(results_dir, "grid")
    head = ["# Experiment 2: the training grid", "",
            "Final test accuracy of real Flower runs, per partition and aggregation, with no defense and each "
            "defense at the strengths around its sweep thresholds, beside the leak the sweep measured at the same "
            "strength in the same setting (see [Experiments](../experiments.md#train)).", ""]
    path = res.data("final_accuracy.csv")
    if path is None:
        return missing_page(head, res, GRID_COMMAND)
    rows = read_csv(path)
    panels = _panels(rows)
    later = any(k.endswith("_later") for k in rows[0])
    body = [provenance(res), "## Final accuracy", "",
            "Leak: identified images / images attacked by the sweep at that strength (round 1), with the 95% "
            "Clopper-Pearson upper bound of the rate" + ("; *later*: the sweep of a trained checkpoint" if later
                                                         else "") + "; hook: the share of the images the hook "
            "identified during training (mean over its attacks).", ""]
    headers = ["defense", "leak naive (round 1)", "leak aware (round 1)"]
    if later:
        headers += ["leak naive (later)", "leak aware (later)"]
    headers += ["hook", *[f"{esc(p)} / {esc(a)}" for p, a in panels]]
    lines = []
    for spec in dict.fromkeys(r["spec"] for r in rows):
        first = next(r for r in rows if r["spec"] == spec)
        cells = [esc(spec)]
        for suffix in ("", "_later") if later else ("",):
            for attacker in ("naive", "aware"):
                cells.append(leak_bound(first.get(f"leaked_{attacker}{suffix}"), first.get(f"n_{attacker}{suffix}"),
                                        to_float(first.get(f"leak_upper95_{attacker}{suffix}"))))
        hooks = [to_float(r.get("hook_leak_rate")) for r in rows if r["spec"] == spec]
        hooks = [h for h in hooks if h is not None]
        cells.append(pct(sum(hooks) / len(hooks)) if hooks else "-")
        for p, a in panels:
            r = next((r for r in rows if r["spec"] == spec and r["partition"] == p and r["aggregation"] == a), None)
            cells.append("-" if r is None or not r.get("final_accuracy") else
                         f"{float(r['final_accuracy']):.4f}")
        lines.append(cells)
    body.append(table(headers, lines))
    body += _against_published_sweep(results_dir, res, rows)
    accs = [(float(r["final_accuracy"]), r) for r in rows if r.get("final_accuracy")]
    if accs:
        lo, hi = min(accs, key=lambda x: x[0]), max(accs, key=lambda x: x[0])
        body += [f"Final accuracy ranges from {lo[0]:.4f} ({esc(lo[1]['spec'])}, {esc(lo[1]['partition'])} / "
                 f"{esc(lo[1]['aggregation'])}) to {hi[0]:.4f} ({esc(hi[1]['spec'])}, {esc(hi[1]['partition'])} / "
                 f"{esc(hi[1]['aggregation'])}) over {len(accs)} cells.", ""]
    body += ["## Figures", "",
             figure(res, "curves.png", "test accuracy against round, a curve per defense and strength"),
             figure(res, "frontier.png", "final accuracy against the identified leak rate of round 1"),
             figure(res, "frontier_later.png", "final accuracy against the identified leak rate of a later round"),
             figure(res, "hook_leak.png", "the hook's identified share of the attacked images during training")]
    hook_path = res.folder / "hook.csv"
    if hook_path.is_file():
        hook = read_csv(hook_path)
        body += ["## The hook during training", "",
                 f"??? info \"Every attack of the hook ({len(hook)})\"", "",
                 indent(table(["defense", "partition", "aggregation", "round", "identified", "paper criterion",
                                "mean adj. SSIM"],
                               [[esc(h["defense"]), esc(h["partition"]), esc(h["aggregation"]), h["round"],
                                 f"{h.get('attack_leaked') or '-'}/{h.get('attack_images') or '-'}",
                                 f"{h.get('attack_leaked_paper') or '-'}/{h.get('attack_images') or '-'}",
                                 fixed(h.get("attack_ssim_adjusted_mean"), 3)] for h in hook])), ""]
    return "\n".join(head + body)
