"""Experiment 1 (``sweep``: minimum defense thresholds) and experiment 2 (``train``: the
privacy-utility training grid), with their tables and figures.

Both are grids of independent cells.  A finished cell is stored as its own file (written
atomically) and never recomputed, so an interrupted sweep or grid resumes where it stopped;
the tables and figures are rebuilt from the cells at the end of every invocation.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from fl_defense.config import ConfigError, PartitionSpec
from fl_defense.io import atomic_write_text, read_jsonl, save_figure, write_json

# Strength grids, weakest first.  Masking and pruning: fraction of coordinates removed.
# Clipping: the L2 bound C of the update (-lr * g; smaller is stronger).  Noising: the
# standard deviation (Gaussian) or scale (Laplace) of the noise added to the update.
DEFAULT_GRIDS = {
    "masking": [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
    "pruning": [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
    "clipping": [1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7],
    "noising": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
    "noising-laplace": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
}
SWEEP_DEFENSES = ("masking", "pruning", "clipping", "noising")


def _fmt_strength(v: float) -> str:
    return f"{v:g}"


def _parse_list(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} is empty, got {text!r}")
    return items


def _parse_grid(text: str | None, defense: str) -> list[float]:
    if not text:
        return list(DEFAULT_GRIDS[defense])
    try:
        return [float(x) for x in _parse_list(text, f"--grid-{defense}")]
    except ValueError:
        raise ConfigError(f"--grid-{defense} must be comma-separated numbers, got {text!r}") from None


# ============================================================================ sweep
def sweep_cell_path(out: Path, dataset: str, defense: str, attacker: str, strength: float) -> Path:
    return out / "cells" / dataset / attacker / f"{defense}={_fmt_strength(strength)}.json"


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from fl_defense.attack_exp import attack_images
    from fl_defense.commands import _settings, dataset_targets
    from fl_defense.data import DATASET_NAMES, check_dataset_available
    from fl_defense.defenses import parse_defense

    datasets = _parse_list(args.datasets, "--datasets")
    defenses = _parse_list(args.defenses, "--defenses")
    attackers = _parse_list(args.attackers, "--attackers")
    for d in datasets:
        if d not in DATASET_NAMES:
            raise ConfigError(f"unknown dataset {d!r} in --datasets; choose from {', '.join(DATASET_NAMES)}")
    for a in attackers:
        if a not in ("naive", "aware"):
            raise ConfigError(f"unknown attacker {a!r} in --attackers; choose naive, aware")
    grids = {}
    for d in defenses:
        if d not in DEFAULT_GRIDS:
            raise ConfigError(f"unknown defense {d!r} in --defenses; choose from {', '.join(DEFAULT_GRIDS)}")
        grids[d] = _parse_grid(getattr(args, f"grid_{d.replace('-', '_')}", None), d)
        for v in grids[d]:
            parse_defense(f"{d}:{v}")  # validates the range, naming the value
    if not 0 <= args.max_leak_rate < 1:
        raise ConfigError(f"--max-leak-rate must be in [0, 1), got {args.max_leak_rate!r}")
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n!r}")
    settings = _settings(args)
    for d in datasets:
        check_dataset_available(d, args.data_dir or None)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "sweep", "datasets": datasets, "defenses": defenses,
                                     "attackers": attackers, "grids": grids, "n": args.n,
                                     "max_leak_rate": args.max_leak_rate, **settings.__dict__})
    cells = [(ds, a, d, s) for ds in datasets for a in attackers for d in defenses for s in grids[d]]
    todo = [c for c in cells if not sweep_cell_path(out, c[0], c[2], c[1], c[3]).exists()]
    print(f"sweep: {len(cells)} cells ({len(cells) - len(todo)} already done) x {args.n} images; "
          f"output {out}", flush=True)
    targets = {ds: dataset_targets(ds, args.n, args.seed, args.data_dir) for ds in datasets}
    # the undefended baseline of each data set (and attacker), for the tables
    baselines = [(ds, a, "none", 0.0) for ds in datasets for a in attackers]
    todo = [c for c in baselines if not sweep_cell_path(out, c[0], c[2], c[1], c[3]).exists()] + todo
    # All missing strengths of one (data set, attacker, defense) are attacked together, in
    # one vectorised batch of chunk-sized pieces; each cell is then stored on its own.
    groups: dict[tuple, list] = {}
    for ds, attacker, defense, strength in todo:
        groups.setdefault((ds, attacker, defense), []).append(strength)
    start = time.perf_counter()
    with tqdm(total=len(todo) * args.n, unit="attack", file=sys.stderr, disable=args.quiet) as bar:
        for (ds, attacker, defense), strengths in groups.items():
            images, labels, names, num_classes = targets[ds]
            specs = [parse_defense("none" if defense == "none" else f"{defense}:{s}") for s in strengths]
            bar.set_description(f"{ds} {attacker} {defense}")
            k = len(images)
            group_settings = settings.__class__(**{**settings.__dict__, "attacker": attacker})
            scores, rows = attack_images(np.concatenate([images] * len(specs)), np.concatenate([labels] * len(specs)),
                                         num_classes, [sp for sp in specs for _ in range(k)], group_settings,
                                         progress=bar.update, client_ids=list(range(k)) * len(specs))
            for j, strength in enumerate(strengths):
                part = slice(j * k, (j + 1) * k)
                save_sweep_cell(out, ds, attacker, defense, strength, rows[part], names, scores.truths[part],
                                scores.recons[part], scores.adjusted[part])
    summarise_sweep(out, datasets, defenses, attackers, grids, args.max_leak_rate, settings.leak_threshold)
    print(f"sweep done in {time.perf_counter() - start:.0f}s (this invocation); wrote "
          f"{out / 'thresholds.csv'}, thresholds.md, ssim_vs_strength.png, grids/")
    print((out / "thresholds.md").read_text())
    return 0


def save_sweep_cell(out: Path, ds: str, attacker: str, defense: str, strength: float, rows: list[dict],
                    names: list[str], truths, recons, adjusted) -> None:
    """One finished cell: per-image rows (jsonl), images (npz), then its summary (json) last,
    so that a cell counts as done only when all three are on disk."""
    from fl_defense.io import atomic_write_bytes, write_jsonl

    rows = [dict(r, image=name) for r, name in zip(rows, names)]
    path = sweep_cell_path(out, ds, defense, attacker, strength)
    write_jsonl(path.with_suffix(".jsonl"), rows)
    buf = io.BytesIO()
    np.savez_compressed(buf, truths=truths, recons=recons, adjusted=adjusted)
    atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())
    leaked = [r["leaked"] for r in rows]
    write_json(path, {"dataset": ds, "attacker": attacker, "defense": defense, "strength": strength,
                      "n": len(rows), "leak_rate": float(np.mean(leaked)),
                      "ssim_mean": float(np.mean([r["ssim"] for r in rows])),
                      "ssim_adjusted_mean": float(np.mean([r["ssim_adjusted"] for r in rows])),
                      "label_acc": float(np.mean([r["label"] == r["label_pred"] for r in rows])),
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
    ``max_leak_rate`` (``None`` when no strength of the grid reaches it)."""
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
                     "strongest_tested": grids.get(defense, [None])[-1]})
    return rows


def summarise_sweep(out: Path, datasets, defenses, attackers, grids, max_leak_rate: float,
                    leak_threshold: float) -> None:
    cells = load_sweep_cells(out, leak_threshold)
    rows = thresholds_from_cells(cells, grids, max_leak_rate)
    buf = io.StringIO()
    fields = ["dataset", "defense", "attacker", "threshold", "leak_rate", "ssim_mean", "ssim_adjusted_mean",
              "n", "undefended_leak_rate", "strongest_tested"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in fields})
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
                    cells_txt.append(f"> {_fmt_strength(r['strongest_tested'])}")
                else:
                    # the weakest strength tested already stops it: the true threshold may be lower
                    weakest = r["threshold"] == grids.get(defense, [None])[0]
                    cells_txt.append(f"{'<= ' if weakest else ''}{_fmt_strength(r['threshold'])} "
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
            if defense in ("clipping", "noising", "noising-laplace"):
                ax.set_xscale("log")
            if defense == "clipping":
                ax.invert_xaxis()
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(f"{ds}: {defense}", fontsize=8)
            ax.set_xlabel({"clipping": "C (stronger to the right)", "masking": "p", "pruning": "p"}.get(
                defense, "sigma / b"), fontsize=7)
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
                                    f"{cell['dataset']} {cell['defense']}:{_fmt_strength(cell['strength'])} "
                                    f"{cell['attacker']}: {r['ssim']:.2f}/{r['ssim_adjusted']:.2f}"))
    for kind, items in found.items():
        t, rcn, adj, cap = zip(*items)
        reconstruction_grid(out / "grids" / f"{kind}.png", np.stack(t), np.stack(rcn), np.stack(adj), cap,
                            title={"leak": "a leak", "leak-after-brightness": "a leak revealed by brightness",
                                   "defended": "defended"}[kind])


# ============================================================================ train
def read_thresholds(path: Path, dataset: str, attacker: str) -> dict[str, float]:
    rows = list(csv.DictReader(path.read_text().splitlines()))
    out = {}
    for r in rows:
        if r["dataset"] == dataset and r["attacker"] == attacker and r["threshold"] not in ("", None):
            out[r["defense"]] = float(r["threshold"])
    return out


def cmd_train(args) -> int:
    from fl_defense.config import parse_run_config
    from fl_defense.defenses import parse_defense
    from fl_defense.launcher import SimulationFailed, run_simulation

    out = Path(args.out).resolve()
    aggregations = _parse_list(args.aggregations, "--aggregations")
    partitions = _parse_list(args.partitions, "--partitions")
    # the defenses and their strengths
    given = {}
    if args.thresholds:
        path = Path(args.thresholds)
        if not path.exists():
            raise FileNotFoundError(f"--thresholds file {path} does not exist")
        given.update(read_thresholds(path, args.threshold_dataset, args.attacker))
    for item in _parse_list(args.defenses, "--defenses") if args.defenses else []:
        spec = parse_defense(item)
        if spec.value is not None:
            given[spec.name] = spec.value
        elif spec.name != "none":
            raise ConfigError(f"--defenses entry {item!r} needs a value (e.g. masking:0.5)")
    names = ["none"] + [d for d in ("masking", "clipping", "pruning", "noising") if d in given]
    missing = [d for d in ("masking", "clipping", "pruning", "noising") if d not in given]
    if missing:
        print(f"note: no threshold for {', '.join(missing)} (not in --thresholds / --defenses); "
              f"they are left out", file=sys.stderr)
    bn = args.model == "bncnn"
    specs = {"none": "none"}
    for d in names[1:]:
        name = "masking-bn" if (d == "masking" and bn) else d
        specs[d] = str(parse_defense(f"{name}:{given[d]}"))
    cells = []
    for partition in partitions:
        PartitionSpec.parse(partition)
        for aggregation in aggregations:
            for d in names:
                cells.append({"defense": d, "spec": specs[d], "aggregation": aggregation, "partition": partition})
    base = {"num-server-rounds": args.rounds, "num-clients": args.clients, "model": args.model,
            "dataset": args.dataset, "lr": args.lr, "local-steps": args.local_steps,
            "batch-size": args.batch_size, "seed": args.seed, "attack-every": args.attack_every,
            "attacker": args.attacker, "attack-max-iter": args.attack_max_iter}
    for cell in cells:  # validate every cell's config before anything runs
        cell["dir"] = out / "cells" / f"{cell['partition'].replace(':', '')}-{cell['aggregation']}-{cell['defense']}"
        cell["config"] = {**base, "defense": cell["spec"], "aggregation": cell["aggregation"],
                          "partition": cell["partition"], "out-dir": str(cell["dir"])}
        parse_run_config(cell["config"], require_out_dir=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"command": "train", "base": base, "cells": [
        {k: v for k, v in c.items() if k != "dir"} for c in cells]})
    done = [c for c in cells if (c["dir"] / "summary.json").exists()]
    print(f"train: {len(cells)} cells ({len(done)} already done), {args.rounds} rounds x {args.clients} clients "
          f"each; output {out}", flush=True)
    start = time.perf_counter()
    for k, cell in enumerate(cells, 1):
        if (cell["dir"] / "summary.json").exists():
            continue
        label = f"[{k}/{len(cells)}] {cell['partition']} {cell['aggregation']} {cell['spec']}"
        print(f"{label} ...", end="", flush=True)
        try:
            res = run_simulation(cell["config"])
        except SimulationFailed as exc:
            print(f" FAILED: {exc}", flush=True)
            return 1
        print(f" accuracy {res.rows[-1].get('accuracy', float('nan')):.4f} ({res.seconds:.0f}s)", flush=True)
    summarise_train(out, cells, args)
    print(f"train done in {time.perf_counter() - start:.0f}s (this invocation); wrote final_accuracy.csv, "
          f"curves.png, frontier.png, hook_ssim.csv in {out}")
    print((out / "final_accuracy.md").read_text())
    return 0


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


# ============================================================================ commands
def register_experiment_commands(sub, common_attack_flags) -> None:
    p = sub.add_parser("sweep", help="experiment 1: the minimum strength at which each defense stops iDLG")
    p.add_argument("--out", required=True)
    p.add_argument("--datasets", default="mnist-embedded", help="comma-separated data sets")
    p.add_argument("--defenses", default=",".join(SWEEP_DEFENSES), help="comma-separated defenses")
    p.add_argument("--attackers", default="naive,aware", help="comma-separated: naive, aware")
    p.add_argument("--n", type=int, default=8, help="images attacked per cell")
    p.add_argument("--max-leak-rate", dest="max_leak_rate", type=float, default=0.0,
                   help="a defense's threshold is the weakest strength whose leak rate is at most this")
    for d in DEFAULT_GRIDS:
        p.add_argument(f"--grid-{d}", dest=f"grid_{d.replace('-', '_')}",
                       help=f"comma-separated strengths, weakest first (default {DEFAULT_GRIDS[d]})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    common_attack_flags(p)
    # one restart (not two): a defended target never converges, so each restart costs a
    # full try; the budget goes to more strengths and images instead
    p.set_defaults(func=cmd_sweep, restarts=1)

    t = sub.add_parser("train", help="experiment 2: the privacy-utility training grid (real Flower runs)")
    t.add_argument("--out", required=True)
    t.add_argument("--thresholds", help="a sweep's thresholds.csv")
    t.add_argument("--threshold-dataset", dest="threshold_dataset", default="mnist-embedded")
    t.add_argument("--defenses", help="comma-separated NAME:VALUE, overriding --thresholds")
    t.add_argument("--attacker", default="naive", choices=("naive", "aware"),
                   help="whose thresholds to train at (and the hook's attacker)")
    t.add_argument("--aggregations", default="mean,median")
    t.add_argument("--partitions", default="iid,dirichlet:0.5")
    t.add_argument("--rounds", type=int, default=20)
    t.add_argument("--clients", type=int, default=10)
    t.add_argument("--model", default="bncnn", choices=("lenet", "bncnn"))
    t.add_argument("--dataset", default="mnist-embedded")
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--local-steps", dest="local_steps", type=int, default=20)
    t.add_argument("--batch-size", dest="batch_size", type=int, default=32)
    t.add_argument("--attack-every", dest="attack_every", type=int, default=10,
                   help="the hook attacks one client every N rounds (0: off)")
    t.add_argument("--attack-max-iter", dest="attack_max_iter", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)
