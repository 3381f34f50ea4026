"""The training grid's tables and figures, rebuilt from its cells:

* ``final_accuracy.csv`` / ``.md`` -- final (and best) test accuracy per cell, with the
  leak rate and mean adjusted SSIM of its defense and strength for both attackers, read
  from the sweep's cells (same setting) at the run's leak threshold;
* ``curves.png`` -- test accuracy per round;
* ``frontier.png`` -- per defense, a curve of final accuracy against leak rate (top row)
  and against mean adjusted SSIM (bottom row) over the trained strengths, naive attacker
  solid with circles, aware dashed with triangles, one column per partition/aggregation;
* ``hook.csv`` / ``hook_leak.png`` -- the hook's leak during training: the share of the
  attacked clients' images it leaked, per round.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from experiments.sweep_cells import load_sweep_cells
from fl_defense.config import ExperimentConfig
from fl_defense.io import atomic_write_text, read_jsonl, save_figure

ATTACKER_STYLE = {"naive": ("-", "o"), "aware": ("--", "^")}


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in fields})
    atomic_write_text(path, buf.getvalue())


def sweep_leak(thresholds: str | None, dataset: str, leak_threshold: float) -> dict[tuple, dict]:
    """``(attacker, defense, strength) -> sweep cell`` of the sweep next to ``thresholds``."""
    if not thresholds or not (Path(thresholds).parent / "cells").is_dir():
        return {}
    return {(c["attacker"], c["defense"], float(c["strength"])): c
            for c in load_sweep_cells(Path(thresholds).parent, leak_threshold) if c["dataset"] == dataset}


def summarise_train(out: Path, cells: list[dict], cfg: ExperimentConfig, thresholds: str | None,
                    dataset: str) -> None:
    leak = sweep_leak(thresholds, dataset, cfg.leak_threshold)
    rows, hook_rows = [], []
    for cell in cells:
        metrics = read_jsonl(cell["dir"] / "metrics.jsonl")
        cell["metrics"] = metrics
        accs = [m.get("accuracy") for m in metrics if m.get("accuracy") is not None]
        attacked = [m for m in metrics if "attack_ssim_adjusted_mean" in m]
        for m in attacked:
            scored = m.get("attack_images") or m.get("attack_targets") or 0
            hook_rows.append({"defense": cell["spec"], "aggregation": cell["aggregation"],
                              "partition": cell["partition"], "round": m["round"],
                              "attack_ssim_adjusted_mean": m["attack_ssim_adjusted_mean"],
                              "attack_leaked": m["attack_leaked"], "attack_images": scored,
                              "leak_rate": m["attack_leaked"] / scored if scored else None})
        row = {"defense": cell["defense"], "strength": cell["strength"], "spec": cell["spec"],
               "aggregation": cell["aggregation"], "partition": cell["partition"],
               "final_accuracy": accs[-1] if accs else None, "best_accuracy": max(accs) if accs else None}
        for attacker in ("naive", "aware"):
            c = leak.get((attacker, cell["defense"], float(cell["strength"])))
            row[f"leak_rate_{attacker}"] = c["leak_rate"] if c else None
            row[f"ssim_adjusted_{attacker}"] = c["ssim_adjusted_mean"] if c else None
        row["hook_leak_rate"] = (float(np.mean([h["leak_rate"] for h in hook_rows[-len(attacked):]
                                                if h["leak_rate"] is not None])) if attacked else None)
        rows.append(row)
    _write_csv(out / "final_accuracy.csv", rows)
    _write_csv(out / "hook.csv", hook_rows)
    _markdown(out, rows)
    _curves(out, cells)
    _frontier(out, rows)
    _hook_leak(out, hook_rows)


def _panels(rows):
    return [(p, a) for p in dict.fromkeys(r["partition"] for r in rows) for a in dict.fromkeys(r["aggregation"] for r in rows)]


def _markdown(out: Path, rows: list[dict]) -> None:
    panels = _panels(rows)
    md = ["| defense | leak naive / aware | " + " | ".join(f"{p} / {a}" for p, a in panels) + " |",
          "|---|---|" + "---|" * len(panels)]
    for spec in dict.fromkeys(r["spec"] for r in rows):
        first = next(r for r in rows if r["spec"] == spec)
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        vals = []
        for p, a in panels:
            r = next((r for r in rows if r["spec"] == spec and r["partition"] == p and r["aggregation"] == a), None)
            vals.append("-" if r is None or r["final_accuracy"] is None else f"{r['final_accuracy']:.4f}")
        md.append(f"| {spec} | {fmt(first['leak_rate_naive'])} / {fmt(first['leak_rate_aware'])} | "
                  + " | ".join(vals) + " |")
    atomic_write_text(out / "final_accuracy.md", "\n".join(md) + "\n")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(out: Path, cells: list[dict]) -> None:
    plt = _plt()
    panels = _panels(cells)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (p, a) in zip(axes[0], panels):
        for cell in cells:
            if cell["partition"] == p and cell["aggregation"] == a and cell["metrics"]:
                ax.plot([m["round"] for m in cell["metrics"]], [m.get("accuracy") for m in cell["metrics"]],
                        label=cell["spec"], lw=1)
        ax.set_title(f"{p} / {a}", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy", fontsize=8)
    axes[0][0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    save_figure(fig, out / "curves.png", dpi=110)
    plt.close(fig)


def _frontier_ylim(rows: list[dict]) -> tuple[float, float]:
    """The accuracy range of the frontier: the points a defense keeps within half of the
    best accuracy, with a margin; points below it (a strength that stopped training) are
    drawn on the lower edge and labelled with their value."""
    accs = [r["final_accuracy"] for r in rows if r["final_accuracy"] is not None]
    if not accs:
        return 0.0, 1.0
    kept = [a for a in accs if a >= 0.5 * max(accs)]
    span = max(max(kept) - min(kept), 0.02)
    return max(0.0, min(kept) - 0.25 * span), min(1.0, max(kept) + 0.15 * span)


def _frontier(out: Path, rows: list[dict]) -> None:
    plt = _plt()
    panels = _panels(rows)
    defenses = [d for d in dict.fromkeys(r["defense"] for r in rows)]
    lo, hi = _frontier_ylim(rows)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7.0), squeeze=False, sharey=True)
    for col, (p, a) in enumerate(panels):
        for k, defense in enumerate(defenses):
            pts = sorted((r for r in rows if r["defense"] == defense and r["partition"] == p
                          and r["aggregation"] == a and r["final_accuracy"] is not None),
                         key=lambda r: r["strength"])
            colour = "black" if defense == "none" else f"C{k}"
            for attacker, (ls, marker) in ATTACKER_STYLE.items():
                for row_i, key in enumerate((f"leak_rate_{attacker}", f"ssim_adjusted_{attacker}")):
                    xy = [(r[key], max(r["final_accuracy"], lo), r) for r in pts if r[key] is not None]
                    if not xy:
                        continue
                    ax = axes[row_i][col]
                    if defense == "none":
                        ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], ls="none", marker="*", ms=9,
                                color=colour, label=f"no defense ({attacker})" if col == 0 and row_i == 0 else None,
                                fillstyle="full" if attacker == "naive" else "none")
                        continue
                    ax.plot([x for x, _, _ in xy], [y for _, y, _ in xy], ls=ls, marker=marker, ms=4, color=colour,
                            lw=1, label=f"{defense} ({attacker})" if col == 0 and row_i == 0 else None)
                    for x, y, r in xy:
                        if r["final_accuracy"] < lo:  # off the scale: on the edge, with its value
                            ax.annotate(f"{r['spec']}: {r['final_accuracy']:.3f}", (x, y), fontsize=5,
                                        xytext=(3, 3), textcoords="offset points", color=colour)
        axes[0][col].set_title(f"{p} / {a}", fontsize=9)
        axes[0][col].set_xlabel("leak rate (sweep, same setting, round 1)", fontsize=7)
        axes[1][col].set_xlabel("mean adjusted SSIM (sweep, same setting, round 1)", fontsize=7)
        for row_i in range(2):
            axes[row_i][col].set_xlim(-0.05, 1.05)
            axes[row_i][col].set_ylim(lo, hi)
            axes[row_i][col].grid(alpha=0.3)
    for row_i in range(2):
        axes[row_i][0].set_ylabel("final test accuracy", fontsize=8)
    axes[0][0].legend(fontsize=5, loc="upper left")
    fig.suptitle("privacy-utility frontier, a curve per defense over its trained strengths\n"
                 "(solid o: naive attacker, dashed ^: aware; points below the axis sit on its edge)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "frontier.png", dpi=110)
    plt.close(fig)


def _hook_leak(out: Path, hook_rows: list[dict]) -> None:
    if not hook_rows:
        return
    plt = _plt()
    panels = _panels(hook_rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (p, a) in zip(axes[0], panels):
        for spec in dict.fromkeys(h["defense"] for h in hook_rows):
            pts = [(h["round"], h["leak_rate"]) for h in hook_rows
                   if h["defense"] == spec and h["partition"] == p and h["aggregation"] == a and h["leak_rate"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", ms=3, lw=0.8, label=spec)
        ax.set_title(f"{p} / {a}", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("hook: share of attacked images leaked", fontsize=8)
    axes[0][0].legend(fontsize=5, ncol=2)
    fig.tight_layout()
    save_figure(fig, out / "hook_leak.png", dpi=110)
    plt.close(fig)
