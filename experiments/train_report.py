"""The training grid's tables and figures, rebuilt from its cells.

* ``final_accuracy.csv`` / ``.md`` -- per cell (partition, aggregation, defense, strength):
  the final and best test accuracy, and the leak the sweep measured at the same strength in
  the same setting, for both attackers: identified ``leaked``/``n`` with the rate and its
  95% Clopper-Pearson upper bound (``leak_upper95``), the paper criterion's rate beside; the
  same from a later-round sweep (``_later`` columns: a sweep of uploads made from a trained
  checkpoint, ``sweep --checkpoint``) when one is given; and the hook's identified leak rate
  during training;
* ``curves.png`` -- the paper's four panels: test accuracy against round, a curve per
  defense and strength, one panel per partition and aggregation;
* ``frontier.png`` (and ``frontier_later.png``) -- per panel, final accuracy against the
  identified leak rate of round 1 (of the later round), a curve per defense over its trained
  strengths, naive attacker solid with circles, aware dashed with triangles, a bar to the
  95% upper bound of each rate;
* ``hook.csv`` / ``hook_leak.png`` -- the hook's leak during training, per round and panel.
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
LEAK_KEYS = ("leaked", "n", "leak_rate", "leak_upper95", "leak_rate_paper")


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in fields})
    atomic_write_text(path, buf.getvalue())


def sweep_leak(sweep_dir: str | Path | None, dataset: str, leak_threshold: float) -> dict[tuple, dict]:
    """``(attacker, defense, strength) -> cell`` of a sweep folder (or of the folder of a
    ``thresholds.csv``), its counts read at ``leak_threshold``."""
    if not sweep_dir:
        return {}
    folder = Path(sweep_dir)
    folder = folder.parent if folder.is_file() else folder
    if not (folder / "cells").is_dir():
        return {}
    return {(c["attacker"], c["defense"], float(c["strength"])): c
            for c in load_sweep_cells(folder, leak_threshold) if c["dataset"] == dataset}


def summarise_train(out: Path, cells: list[dict], cfg: ExperimentConfig, thresholds: str | None,
                    dataset: str, later: str | None = None) -> None:
    sweeps = {"": sweep_leak(thresholds, dataset, cfg.leak_threshold),
              "_later": sweep_leak(later, dataset, cfg.leak_threshold)}
    rows, hook_rows = [], []
    for cell in cells:
        metrics = read_jsonl(cell["dir"] / "metrics.jsonl")
        cell["metrics"] = metrics
        accs = [m.get("accuracy") for m in metrics if m.get("accuracy") is not None]
        attacked = [m for m in metrics if "attack_ssim_adjusted_mean" in m]
        cell_hook = []
        for m in attacked:
            scored = m.get("attack_images") or 0
            leaked = m.get("attack_leaked")
            cell_hook.append({"defense": cell["spec"], "aggregation": cell["aggregation"],
                              "partition": cell["partition"], "round": m["round"],
                              "attack_ssim_adjusted_mean": m["attack_ssim_adjusted_mean"],
                              "attack_leaked": leaked, "attack_leaked_paper": m.get("attack_leaked_paper"),
                              "attack_images": scored,
                              "leak_rate": leaked / scored if scored and leaked is not None else None})
        hook_rows += cell_hook
        row = {"defense": cell["defense"], "strength": cell["strength"], "spec": cell["spec"],
               "aggregation": cell["aggregation"], "partition": cell["partition"],
               "final_accuracy": accs[-1] if accs else None, "best_accuracy": max(accs) if accs else None,
               "rounds": len(accs)}
        for suffix, leak in sweeps.items():
            if suffix and not leak:
                continue
            for attacker in ("naive", "aware"):
                c = leak.get((attacker, cell["defense"], float(cell["strength"])))
                for key in LEAK_KEYS:
                    row[f"{key}_{attacker}{suffix}"] = c.get(key) if c else None
        rates = [h["leak_rate"] for h in cell_hook if h["leak_rate"] is not None]
        row["hook_leak_rate"] = float(np.mean(rates)) if rates else None
        rows.append(row)
    _write_csv(out / "final_accuracy.csv", rows)
    _write_csv(out / "hook.csv", hook_rows)
    _markdown(out, rows)
    _curves(out, cells)
    _frontier(out, rows, "", "frontier.png", "round 1")
    if sweeps["_later"]:
        _frontier(out, rows, "_later", "frontier_later.png", "a later round (sweep --checkpoint)")
    _hook_leak(out, hook_rows)


def _panels(rows):
    return [(p, a) for p in dict.fromkeys(r["partition"] for r in rows)
            for a in dict.fromkeys(r["aggregation"] for r in rows)]


def _rate(r: dict, attacker: str, suffix: str = "") -> str:
    k, n = r.get(f"leaked_{attacker}{suffix}"), r.get(f"n_{attacker}{suffix}")
    if k is None or n is None:
        return "-"
    return f"{k}/{n} (<= {r[f'leak_upper95_{attacker}{suffix}']:.0%})"


def _markdown(out: Path, rows: list[dict]) -> None:
    panels = _panels(rows)
    later = any(k.endswith("_later") for r in rows for k in r)
    head = "| defense | leak naive / aware (round 1) |" + (" leak naive / aware (later) |" if later else "")
    md = [head + " " + " | ".join(f"{p} / {a}" for p, a in panels) + " |",
          "|---|---|" + ("---|" if later else "") + "---|" * len(panels)]
    for spec in dict.fromkeys(r["spec"] for r in rows):
        first = next(r for r in rows if r["spec"] == spec)
        vals = []
        for p, a in panels:
            r = next((r for r in rows if r["spec"] == spec and r["partition"] == p and r["aggregation"] == a), None)
            vals.append("-" if r is None or r["final_accuracy"] is None else f"{r['final_accuracy']:.4f}")
        leak = f"{_rate(first, 'naive')} / {_rate(first, 'aware')}"
        extra = f" {_rate(first, 'naive', '_later')} / {_rate(first, 'aware', '_later')} |" if later else ""
        md.append(f"| {spec} | {leak} |{extra} " + " | ".join(vals) + " |")
    atomic_write_text(out / "final_accuracy.md", "\n".join(md) + "\n")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid_axes(plt, panels, width: float, height: float, **kw):
    """A 2x2 grid for the four panels (partition x aggregation), else one row."""
    parts = list(dict.fromkeys(p for p, _ in panels))
    aggs = list(dict.fromkeys(a for _, a in panels))
    if len(parts) * len(aggs) == len(panels) and len(parts) > 1 and len(aggs) > 1:
        fig, axes = plt.subplots(len(parts), len(aggs), figsize=(width * len(aggs), height * len(parts)),
                                 squeeze=False, **kw)
        return fig, {(p, a): axes[i][j] for i, p in enumerate(parts) for j, a in enumerate(aggs)}
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), height), squeeze=False, **kw)
    return fig, {pa: axes[0][i] for i, pa in enumerate(panels)}


def _curves(out: Path, cells: list[dict]) -> None:
    plt = _plt()
    panels = _panels(cells)
    fig, axes = _grid_axes(plt, panels, 4.6, 3.4, sharey=True)
    specs = list(dict.fromkeys(c["spec"] for c in cells))
    colours = {s: ("black" if s == "none" else f"C{i % 10}") for i, s in enumerate(specs)}
    for (p, a), ax in axes.items():
        for cell in cells:
            if cell["partition"] == p and cell["aggregation"] == a and cell["metrics"]:
                ax.plot([m["round"] for m in cell["metrics"]], [m.get("accuracy") for m in cell["metrics"]],
                        label=cell["spec"], lw=1, color=colours[cell["spec"]],
                        ls="-" if cell["defense"] in ("none", "masking", "pruning") else "--")
        ax.set_title(f"{p} / {a}", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.grid(alpha=0.3)
    next(iter(axes.values())).legend(fontsize=5, ncol=2)
    fig.suptitle("test accuracy against round, a curve per defense and strength", fontsize=9)
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


def _frontier(out: Path, rows: list[dict], suffix: str, name: str, when: str) -> None:
    plt = _plt()
    panels = _panels(rows)
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    lo, hi = _frontier_ylim(rows)
    fig, axes = _grid_axes(plt, panels, 4.6, 3.6, sharey=True)
    first = True
    for (p, a), ax in axes.items():
        for k, defense in enumerate(defenses):
            pts = sorted((r for r in rows if r["defense"] == defense and r["partition"] == p
                          and r["aggregation"] == a and r["final_accuracy"] is not None), key=lambda r: r["strength"])
            colour = "black" if defense == "none" else f"C{k % 10}"
            for attacker, (ls, marker) in ATTACKER_STYLE.items():
                key = f"leak_rate_{attacker}{suffix}"
                xy = [(r[key], max(r["final_accuracy"], lo), r) for r in pts if r.get(key) is not None]
                if not xy:
                    continue
                xs, ys = [x for x, _, _ in xy], [y for _, y, _ in xy]
                err = [[0] * len(xy), [r[f"leak_upper95_{attacker}{suffix}"] - x for x, _, r in xy]]
                label = (f"no defense ({attacker})" if defense == "none" else f"{defense} ({attacker})") if first \
                    else None
                if defense == "none":
                    ax.errorbar(xs, ys, xerr=err, ls="none", marker="*", ms=9, color=colour, label=label, lw=0.6,
                                fillstyle="full" if attacker == "naive" else "none")
                    continue
                ax.errorbar(xs, ys, xerr=err, ls=ls, marker=marker, ms=4, color=colour, lw=1, elinewidth=0.5,
                            capsize=1.5, label=label)
                for x, y, r in xy:
                    if r["final_accuracy"] < lo:  # off the scale: on the edge, with its value
                        ax.annotate(f"{r['spec']}: {r['final_accuracy']:.3f}", (x, y), fontsize=5,
                                    xytext=(3, 3), textcoords="offset points", color=colour)
        first = False
        ax.set_title(f"{p} / {a}", fontsize=9)
        ax.set_xlabel(f"identified leak rate ({when}; bar: 95% upper bound)", fontsize=7)
        ax.set_ylabel("final test accuracy", fontsize=8)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(lo, hi)
        ax.grid(alpha=0.3)
    next(iter(axes.values())).legend(fontsize=5, loc="lower right")
    fig.suptitle(f"privacy-utility frontier at {when}, a curve per defense over its trained strengths\n"
                 "(solid o: naive attacker, dashed ^: aware; points below the axis sit on its edge)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / name, dpi=110)
    plt.close(fig)


def _hook_leak(out: Path, hook_rows: list[dict]) -> None:
    if not hook_rows:
        return
    plt = _plt()
    panels = _panels(hook_rows)
    fig, axes = _grid_axes(plt, panels, 4.6, 3.2, sharey=True)
    for (p, a), ax in axes.items():
        for spec in dict.fromkeys(h["defense"] for h in hook_rows):
            pts = [(h["round"], h["leak_rate"]) for h in hook_rows
                   if h["defense"] == spec and h["partition"] == p and h["aggregation"] == a
                   and h["leak_rate"] is not None]
            if pts:
                ax.plot(*zip(*pts), marker=".", ms=3, lw=0.8, label=spec)
        ax.set_title(f"{p} / {a}", fontsize=9)
        ax.set_xlabel("round", fontsize=8)
        ax.set_ylabel("hook: share of attacked images identified", fontsize=7)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    next(iter(axes.values())).legend(fontsize=5, ncol=2)
    fig.tight_layout()
    save_figure(fig, out / "hook_leak.png", dpi=110)
    plt.close(fig)
