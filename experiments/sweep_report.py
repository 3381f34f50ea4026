"""The sweep's tables and figures, rebuilt from its cells: ``thresholds.csv``,
``thresholds.md``, ``ssim_vs_strength.png`` and example grids."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from experiments.common import fmt_strength
from experiments.setting import SETTING_KEYS
from experiments.sweep_cells import load_sweep_cells, sweep_cell_path, thresholds_from_cells
from fl_defense.defenses import get_defense
from fl_defense.io import atomic_write_text, read_jsonl, save_figure

# thresholds.csv: these columns, then the setting the cells were measured in (one per key)
THRESHOLD_FIELDS = ["dataset", "defense", "attacker", "threshold", "leak_rate", "ssim_mean", "ssim_adjusted_mean",
                    "n", "undefended_leak_rate", "strongest_tested", "tested"]

def summarise_sweep(out: Path, datasets, defenses, attackers, grids, max_leak_rate: float,
                    leak_threshold: float) -> None:
    cells = load_sweep_cells(out, leak_threshold)
    rows = thresholds_from_cells(cells, grids, max_leak_rate)
    buf = io.StringIO()
    fields = THRESHOLD_FIELDS + [k for k in SETTING_KEYS if k != "dataset"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    atomic_write_text(out / "thresholds.csv", buf.getvalue())
    # markdown: rows defenses (x attacker), columns data sets
    lines = [f"Minimum strength at which the leak rate (adjusted SSIM >= {leak_threshold}) falls to "
             f"<= {max_leak_rate:g}; '> X': no strength up to X stopped the attacker; '<= X': the weakest "
             f"strength tested already did.", "",
             "| defense | attacker | " + " | ".join(datasets) + " |",
             "|---|---|" + "---|" * len(datasets)]
    for defense in defenses:
        for attacker in attackers:
            cells_txt = []
            for ds in datasets:
                r = next((r for r in rows if r["dataset"] == ds and r["attacker"] == attacker
                          and r["defense"] == defense), None)
                if r is None:
                    cells_txt.append("-")
                elif r["threshold"] is None:
                    cells_txt.append(f"> {fmt_strength(r['strongest_tested'])}")
                else:
                    # the weakest strength tested already stops it: the true threshold may be lower
                    weakest = r["threshold"] == grids.get(defense, [None])[0]
                    cells_txt.append(f"{'<= ' if weakest else ''}{fmt_strength(r['threshold'])} "
                                     f"(adj. SSIM {r['ssim_adjusted_mean']:.2f})")
            lines.append(f"| {defense} | {attacker} | " + " | ".join(cells_txt) + " |")
    atomic_write_text(out / "thresholds.md", "\n".join(lines) + "\n")
    plot_ssim_vs_strength(out, cells, datasets, defenses, attackers, grids, leak_threshold)
    save_example_grids(out, cells, leak_threshold)


def plot_ssim_vs_strength(out: Path, cells, datasets, defenses, attackers, grids, leak_threshold) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(datasets), len(defenses), figsize=(3.2 * len(defenses), 2.8 * len(datasets)),
                             squeeze=False)
    styles = {"naive": "-", "aware": "--"}
    for i, ds in enumerate(datasets):
        for j, defense in enumerate(defenses):
            ax = axes[i][j]
            for attacker in attackers:
                pts = sorted((c["strength"], c["ssim_adjusted_mean"], c["ssim_mean"]) for c in cells
                             if c["dataset"] == ds and c["attacker"] == attacker and c["defense"] == defense)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], styles.get(attacker, "-"), marker="o", ms=3,
                        label=f"{attacker}: adjusted SSIM")
                ax.plot(xs, [p[2] for p in pts], styles.get(attacker, "-"), marker="x", ms=3, alpha=0.5,
                        label=f"{attacker}: SSIM")
            ax.axhline(leak_threshold, color="red", lw=0.8, ls=":")
            entry = get_defense(defense)
            if entry.axis == "log":
                ax.set_xscale("log")
            if entry.stronger == "lower":
                ax.invert_xaxis()
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{ds}: {defense}", fontsize=8)
            ax.set_xlabel(entry.axis_label, fontsize=7)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("mean SSIM", fontsize=7)
    axes[0][0].legend(fontsize=5)
    fig.tight_layout()
    save_figure(fig, out / "ssim_vs_strength.png", dpi=110)
    plt.close(fig)


def save_example_grids(out: Path, cells, leak_threshold: float) -> None:
    """The paper's figures 2-4: a leak, a leak revealed only by the brightness adjustment, a
    defended image -- the first example of each found in the sweep's cells."""
    from fl_defense.plots import reconstruction_grid

    found: dict[str, tuple] = {}
    for cell in cells:
        base = sweep_cell_path(out, cell["dataset"], cell["defense"], cell["attacker"], cell["strength"])
        rows = read_jsonl(base.with_suffix(".jsonl"))
        if not base.with_suffix(".npz").exists():
            continue
        arr = np.load(base.with_suffix(".npz"))
        for i, r in enumerate(rows):
            kind = None
            if r["ssim"] >= leak_threshold:
                kind = "leak"
            elif r["ssim_adjusted"] >= leak_threshold:
                kind = "leak-after-brightness"
            elif cell["defense"] != "none":
                kind = "defended"
            if kind and len(found.setdefault(kind, [])) < 4:
                found[kind].append((arr["truths"][i], arr["recons"][i], arr["adjusted"][i],
                                    f"{cell['dataset']} {cell['defense']}:{fmt_strength(cell['strength'])} "
                                    f"{cell['attacker']}: {r['ssim']:.2f}/{r['ssim_adjusted']:.2f}"))
    for kind, items in found.items():
        t, rcn, adj, cap = zip(*items)
        reconstruction_grid(out / "grids" / f"{kind}.png", np.stack(t), np.stack(rcn), np.stack(adj), cap,
                            title={"leak": "a leak", "leak-after-brightness": "a leak revealed by brightness",
                                   "defended": "defended"}[kind])
