"""The sweep's tables and figures, rebuilt from its cells: ``cells.csv`` (every cell),
``thresholds.csv`` and ``thresholds.md`` (per defense and attacker, both criteria, each
threshold with its cell's n, leaked, failed and 95% upper bound), ``leak_vs_strength.png``
and example grids."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from experiments.common import fmt_strength
from experiments.setting import SETTING_KEYS
from experiments.sweep_cells import CRITERIA, load_sweep_cells, sweep_cell_path, thresholds_from_cells
from fl_defense.defenses import get_defense
from fl_defense.io import atomic_write_text, save_figure

# thresholds.csv: these columns, then the setting the cells were measured in (one per key)
THRESHOLD_FIELDS = ["dataset", "defense", "attacker",
                    *[f"{c}{s}" for s in CRITERIA for c in ("threshold", "n", "leaked", "failed", "leak_rate",
                                                            "leak_upper95", "undefended_leak_rate")],
                    "ssim_mean", "ssim_adjusted_mean", "decoys", "strongest_tested", "tested"]
CELL_FIELDS = ["dataset", "attacker", "defense", "strength", "spec", "n", "leaked", "leak_rate", "leak_upper95",
               "leaked_paper", "leak_rate_paper", "leak_upper95_paper", "failed", "ssim_mean", "ssim_adjusted_mean",
               "label_acc", "clients", "seconds", "same_as", "decoys"]


def _csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    atomic_write_text(path, buf.getvalue())


def threshold_text(row: dict, suffix: str, weakest: float | None) -> str:
    """A threshold cell of ``thresholds.md``: ``0.7 (0/64, <= 5.6%)``, ``> 0.99`` or ``<= 0.1 (...)``."""
    thr = row[f"threshold{suffix}"]
    if row.get(f"leaked{suffix}") is None and thr is None and suffix == "" and row.get("decoys") is None:
        return "no decoys"
    if thr is None:
        return f"> {fmt_strength(row['strongest_tested'])}"
    # the weakest strength tested already stops it: the true threshold may be lower
    below = "<= " if thr == weakest else ""
    return (f"{below}{fmt_strength(thr)} ({row[f'leaked{suffix}']}/{row[f'n{suffix}']}, "
            f"<= {row[f'leak_upper95{suffix}']:.1%})")


def summarise_sweep(out: Path, datasets, defenses, attackers, grids, max_leak_rate: float,
                    leak_threshold: float) -> None:
    cells = load_sweep_cells(out, leak_threshold)
    _csv(out / "cells.csv", sorted(cells, key=lambda c: (c["dataset"], c["attacker"], c["defense"],
                                                          c["strength"])), CELL_FIELDS)
    rows = thresholds_from_cells(cells, grids, max_leak_rate)
    _csv(out / "thresholds.csv", rows, THRESHOLD_FIELDS + [k for k in SETTING_KEYS if k != "dataset"])
    lines = [f"The weakest strength at which a defense stops the attack: its leak rate is at most {max_leak_rate:g} "
             f"there and at every stronger strength tested.  Identification: the reconstruction is at adjusted "
             f"SSIM >= {leak_threshold} to its private image and closer to it than to every public decoy; paper "
             f"criterion: adjusted SSIM >= {leak_threshold} alone.  Each threshold with its cell's leaked/n and "
             f"the 95% Clopper-Pearson upper bound of its leak rate; '> X': no strength up to X stopped the "
             f"attacker; '<= X': the weakest strength tested already did.", "",
             "| defense | attacker | " + " | ".join(f"{ds} (identification) | {ds} (paper)" for ds in datasets) + " |",
             "|---|---|" + "---|---|" * len(datasets)]
    for defense in defenses:
        for attacker in attackers:
            texts = []
            for ds in datasets:
                r = next((r for r in rows if r["dataset"] == ds and r["attacker"] == attacker
                          and r["defense"] == defense), None)
                weakest = grids.get(defense, [None])[0]
                texts += ["-", "-"] if r is None else [threshold_text(r, s, weakest) for s in CRITERIA]
            lines.append(f"| {defense} | {attacker} | " + " | ".join(texts) + " |")
    atomic_write_text(out / "thresholds.md", "\n".join(lines) + "\n")
    plot_leak_vs_strength(out, cells, datasets, defenses, attackers, leak_threshold)
    save_example_grids(out, cells, leak_threshold)


def plot_leak_vs_strength(out: Path, cells, datasets, defenses, attackers, leak_threshold) -> None:
    """Per data set and defense: the leak rate against strength under both criteria (with
    the 95% upper bound as a band), per attacker; the undefended rate as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), len(defenses), figsize=(3.2 * len(defenses), 2.8 * len(datasets)),
                             squeeze=False)
    colours = {"naive": "tab:blue", "aware": "tab:red"}
    for i, ds in enumerate(datasets):
        for j, defense in enumerate(defenses):
            ax = axes[i][j]
            entry = get_defense(defense)
            for attacker in attackers:
                pts = sorted((c["strength"], c) for c in cells
                             if c["dataset"] == ds and c["attacker"] == attacker and c["defense"] == defense)
                base = next((c for c in cells if c["dataset"] == ds and c["attacker"] == attacker
                             and c["defense"] == "none"), None)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                for suffix, style, marker in (("", "-", "o"), ("_paper", ":", "x")):
                    ys = [p[1][f"leak_rate{suffix}"] for p in pts]
                    if any(y is None for y in ys):
                        continue
                    label = f"{attacker}, {'identification' if not suffix else 'paper criterion'}"
                    ax.plot(xs, ys, style, marker=marker, ms=3, color=colours.get(attacker), label=label)
                    if not suffix:
                        ax.fill_between(xs, ys, [p[1]["leak_upper95"] for p in pts], color=colours.get(attacker),
                                        alpha=0.12, lw=0)
                if base is not None and base.get("leak_rate") is not None:
                    ax.axhline(base["leak_rate"], color=colours.get(attacker), lw=0.7, ls="--", alpha=0.6)
            if entry.axis == "log":
                ax.set_xscale("log")
            if entry.stronger == "lower":
                ax.invert_xaxis()
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(f"{ds}: {defense}", fontsize=8)
            ax.set_xlabel(entry.axis_label, fontsize=7)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("leak rate", fontsize=7)
    axes[0][0].legend(fontsize=5)
    fig.suptitle(f"leak rate against strength (adjusted SSIM >= {leak_threshold}; band: 95% upper bound; dashed: "
                 f"no defense)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "leak_vs_strength.png", dpi=110)
    plt.close(fig)


def save_example_grids(out: Path, cells, leak_threshold: float) -> None:
    """Examples found in the sweep's cells: reconstructions that identify their private
    image (``identified``), ones the paper's criterion counts but that a public decoy
    matches better (``paper-only``), and defended ones (``defended``) -- the first four of
    each."""
    from fl_defense import metrics
    from fl_defense.io import read_jsonl
    from fl_defense.plots import reconstruction_grid
    from fl_defense.scoring import load_record

    found: dict[str, list] = {}
    titles = {"identified": "identified among the decoys", "paper-only": "the paper's criterion only (a decoy "
              "is closer)", "defended": "defended"}
    for cell in cells:
        if cell.get("same_as"):
            continue
        base = sweep_cell_path(out, cell["dataset"], cell["defense"], cell["attacker"], cell["strength"])
        if not base.with_suffix(".npz").exists():
            continue
        rows = read_jsonl(base.with_suffix(".jsonl"))
        record = None
        for i, r in enumerate(rows):
            kind = ("identified" if r["leaked"] else "paper-only" if r["leaked_paper"] else
                    "defended" if cell["defense"] != "none" else None)
            if kind is None or len(found.setdefault(kind, [])) >= 4:
                continue
            record = record or load_record(base.with_suffix(".npz"))
            j = int(record["match"][i])
            truth = record["truths"][i]
            recon = record["reconstructions"][j] if j >= 0 else np.zeros_like(truth)
            decoy = "" if r["ssim_decoy_max"] is None else f" / decoy {r['ssim_decoy_max']:.2f}"
            found[kind].append((truth, recon, metrics.adjust_brightness(truth, recon),
                                f"{cell['dataset']} {cell['defense']}:{fmt_strength(cell['strength'])} "
                                f"{cell['attacker']}: {r['ssim_adjusted']:.2f}{decoy}"))
    for kind, items in found.items():
        t, rcn, adj, cap = zip(*items)
        reconstruction_grid(out / "grids" / f"{kind}.png", np.stack(t), np.stack(rcn), np.stack(adj), cap,
                            title=titles[kind])
