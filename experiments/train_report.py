"""The training grid's tables and figures: ``final_accuracy.csv``/``.md``, ``curves.png``,
``frontier.png`` and ``hook_ssim.csv``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from experiments.sweep_cells import load_sweep_cells
from fl_defense.io import atomic_write_text, read_jsonl, save_figure

def summarise_train(out: Path, cells, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the leak rate of each trained strength against each attacker, from the sweep's cells
    # (next to its thresholds.csv), read at this run's leak threshold
    leak: dict[tuple[str, str], float] = {}
    if args.thresholds and (Path(args.thresholds).parent / "cells").is_dir():
        from fl_defense.config import ExperimentConfig

        for c in load_sweep_cells(Path(args.thresholds).parent, ExperimentConfig().leak_threshold):
            if c["dataset"] == args.threshold_dataset:
                leak[(c["attacker"], c["defense"] if c["defense"] == "none" else f"{c['defense']}:{c['strength']:g}")] = c["leak_rate"]

    def leak_of(attacker: str, cell: dict) -> float | None:
        if cell["defense"] == "none":
            return leak.get((attacker, "none"))
        strength = float(cell["spec"].split(":")[1].split(",")[0])
        return leak.get((attacker, f"{cell['defense']}:{strength:g}"))
    rows, hook_rows = [], []
    for cell in cells:
        metrics = read_jsonl(cell["dir"] / "metrics.jsonl")
        cell["metrics"] = metrics
        accs = [m.get("accuracy") for m in metrics]
        attacked = [m for m in metrics if "attack_ssim_adjusted_mean" in m]
        for m in attacked:
            hook_rows.append({"defense": cell["spec"], "aggregation": cell["aggregation"],
                              "partition": cell["partition"], "round": m["round"],
                              "attack_ssim_mean": m["attack_ssim_mean"],
                              "attack_ssim_adjusted_mean": m["attack_ssim_adjusted_mean"],
                              "attack_leaked": m["attack_leaked"]})
        rows.append({"defense": cell["defense"], "spec": cell["spec"], "aggregation": cell["aggregation"],
                     "partition": cell["partition"], "final_accuracy": accs[-1] if accs else None,
                     "best_accuracy": max(a for a in accs if a is not None) if accs else None,
                     "leak_rate_naive": leak_of("naive", cell),
                     "leak_rate_aware": leak_of("aware", cell),
                     "hook_ssim_adjusted_mean": float(np.mean([m["attack_ssim_adjusted_mean"] for m in attacked]))
                     if attacked else None})
    fields = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r[k] is None else r[k] for k in fields})
    atomic_write_text(out / "final_accuracy.csv", buf.getvalue())
    if hook_rows:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(hook_rows[0].keys()))
        w.writeheader()
        w.writerows(hook_rows)
        atomic_write_text(out / "hook_ssim.csv", buf.getvalue())
    partitions = list(dict.fromkeys(c["partition"] for c in cells))
    aggregations = list(dict.fromkeys(c["aggregation"] for c in cells))
    md = ["| defense | " + " | ".join(f"{p} / {a}" for p in partitions for a in aggregations) + " |",
          "|---|" + "---|" * (len(partitions) * len(aggregations))]
    for spec in dict.fromkeys(r["spec"] for r in rows):
        vals = []
        for p in partitions:
            for a in aggregations:
                r = next((r for r in rows if r["spec"] == spec and r["partition"] == p and r["aggregation"] == a), None)
                vals.append("-" if r is None or r["final_accuracy"] is None else f"{r['final_accuracy']:.4f}")
        md.append(f"| {spec} | " + " | ".join(vals) + " |")
    atomic_write_text(out / "final_accuracy.md", "\n".join(md) + "\n")
    # curves: rows partitions, columns aggregations, a line per defense
    fig, axes = plt.subplots(len(partitions), len(aggregations), figsize=(4.5 * len(aggregations),
                             3.2 * len(partitions)), squeeze=False, sharey=True)
    for i, p in enumerate(partitions):
        for j, a in enumerate(aggregations):
            ax = axes[i][j]
            for cell in cells:
                if cell["partition"] == p and cell["aggregation"] == a and cell["metrics"]:
                    ax.plot([m["round"] for m in cell["metrics"]], [m.get("accuracy") for m in cell["metrics"]],
                            label=cell["spec"])
            ax.set_title(f"{'IID' if p == 'iid' else 'non-IID (' + p + ')'} / {a}", fontsize=9)
            ax.set_xlabel("round", fontsize=8)
            ax.set_ylabel("test accuracy", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "curves.png", dpi=110)
    plt.close(fig)
    # frontier: final accuracy vs leak rate (from the sweep), a point per defense
    fig, axes = plt.subplots(1, len(partitions) * len(aggregations), figsize=(4 * len(partitions) * len(aggregations), 3.4),
                             squeeze=False, sharey=True)
    k = 0
    for p in partitions:
        for a in aggregations:
            ax = axes[0][k]
            k += 1
            for r in rows:
                if r["partition"] != p or r["aggregation"] != a or r["final_accuracy"] is None:
                    continue
                colour = f"C{[x['spec'] for x in rows].index(r['spec']) % 10}"
                for attacker, marker in (("naive", "o"), ("aware", "^")):
                    x = r[f"leak_rate_{attacker}"]
                    if x is not None:
                        ax.scatter([x], [r["final_accuracy"]], s=30, marker=marker, color=colour,
                                   label=f"{r['spec']} ({attacker})" if k == 1 else None)
            ax.set_xlabel("leak rate (single-image iDLG; o naive, ^ aware attacker)", fontsize=7)
            ax.set_title(f"{p} / {a}", fontsize=9)
            ax.set_xlim(-0.05, 1.05)
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("final test accuracy", fontsize=8)
    axes[0][0].legend(fontsize=5, loc="center")
    fig.tight_layout()
    save_figure(fig, out / "frontier.png", dpi=110)
    plt.close(fig)
