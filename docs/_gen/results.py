"""The Results pages, rendered from the result files committed under ``docs/results/``.

Every result folder holds the experiment's own files (CSV, JSON, figures) and a
``meta.json`` with the command that made it and its date (``{"command": ..., "date":
"YYYY-MM-DD"}``; the benchmarks' JSON files carry both too).  A page shows each result's
command and date, its tables (rendered from the CSV/JSON, never typed), its figures, and a
sentence of reading only where it is computed from the data.  A folder that is missing
renders as "not yet measured".

Folders (``docs/results/<name>/``):

* ``null_floor/`` -- ``null_floor.json`` (``python -m benchmarks.null_floor --out DIR``);
* ``leak_map/``, ``leak_map-<name>/`` -- ``leak_map.json`` and ``leak_map.png`` (``python -m benchmarks.leak_map``; :mod:`_gen.leak_map`);
* ``attack_choices-<name>/`` -- ``attack_choices.json`` (``python -m benchmarks.attack_choices``; on the
  Leak map page);
* ``label_spread-<name>/`` -- ``label_spread.json`` (``python -m benchmarks.label_spread``; on the Leak
  map page);
* ``sweep-<kind>/`` -- a sweep's ``thresholds.csv``, ``cells.csv``, ``leak_vs_strength.png``,
  ``config.json`` (``python run_sim.py sweep``);
* ``grid/`` -- a training grid's ``final_accuracy.csv``, ``hook.csv``, ``curves.png``,
  ``frontier.png``, ``frontier_later.png``, ``hook_leak.png`` (``python run_sim.py train``;
  :mod:`_gen.training_grid`).
"""

from __future__ import annotations

import statistics

from pathlib import Path
from typing import Callable

from _gen.result_files import (NOT_MEASURED, Result, figure, find, fixed, folder_names, leak_bound, missing_page,
                               not_measured, provenance, rate_ci, read_csv, read_json, to_float, to_int)
from _gen.leak_map import attack_choices_folders, label_spread_folders, leak_map_folders, leak_map_page
from _gen.text import code, esc, fmt_number, indent, pct, table
from _gen.training_grid import grid_page


# ------------------------------------------------------------------------------ null floor

NULL_FLOOR_COMMAND = "python -m benchmarks.null_floor --n 256 --out docs/results/null_floor"
CRITERIA_NULL = (("paper", "paper criterion"), ("identification", "identification"),
                 ("identification_same_label", "identification, same-label decoys"))


def null_floor_page(results_dir: Path) -> str:
    res = find(results_dir, "null_floor", "null_floor.json")
    head = ["# Null floor", "",
            "How often each leak criterion fires on \"reconstructions\" that hold nothing of the private "
            "image: a blank, a grey or a noise image, the mean public image, the mean public image of the "
            "private image's label (an attacker that recovers the label and inverts nothing) and the public "
            "image most similar to the private one (the best a copy of public data can do).  See "
            "[the leak criteria](../concepts/leak-criteria.md) and `benchmarks/null_floor.py`.", ""]
    path = res.data("null_floor.json")
    if path is None:
        return missing_page(head, res, NULL_FLOOR_COMMAND)
    rows = read_json(path)["rows"]
    body = [provenance(res)]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        kr = [r for r in rows if r["kind"] == kind]
        threshold = kr[0].get("leak_threshold")
        body += [f"## {esc(kind)} (`{esc(kr[0]['dataset'])}`)", "",
                 f"Decoy pool: {esc(kr[0]['decoys'])}.  Leak threshold: adjusted SSIM >= "
                 f"{fmt_number(threshold)}.", "",
                 table(["null reconstruction", "images", *[c for _, c in CRITERIA_NULL]],
                       [[esc(r["null"]), r["n"], *[rate_ci(r[f"{k}_leaked"], r["n"], r[f"{k}_ci95_low"],
                                                          r[f"{k}_ci95_high"]) for k, _ in CRITERIA_NULL]]
                        for r in kr])]
    body += ["## Reading", "", null_floor_reading(rows), ""]
    return "\n".join(head + body)


def _where(rows: list[dict], key: str, value: float) -> str:
    return "; ".join(f"{r['kind']}, {r['null']}" for r in rows if r[key] == value)


def null_floor_reading(rows: list[dict]) -> str:
    """What the rows themselves say: the most often each criterion fires on a null row."""
    ident = max(r["identification_rate"] for r in rows)
    paper = max(r["paper_rate"] for r in rows)
    top = max(r["identification_ci95_high"] for r in rows)
    first = (f"Identification fires on at most {pct(ident)} of the images of any null row "
             f"({esc(_where(rows, 'identification_rate', ident))})" if ident > 0 else
             "Identification fires on none of the images of any null row")
    return (f"{first}; the upper end of a row's 95% interval is at most {pct(top)}.  The paper criterion alone "
            + (f"fires on up to {pct(paper)} of a null row's images ({esc(_where(rows, 'paper_rate', paper))})."
               if paper > 0 else "fires on none of them."))


# ------------------------------------------------------------------------------ leak map

# ------------------------------------------------------------------------------ sweeps

SWEEP_COMMAND = "python run_sim.py sweep --out docs/results/sweep-<kind> ..."


def _fmt_strength(value) -> str:
    v = to_float(value)
    return "-" if v is None else f"{v:g}"


def threshold_text(row: dict, suffix: str) -> str:
    """A threshold as the sweep's own ``thresholds.md`` writes it: ``0.7 (0/64, <= 5.6%)``,
    ``> 0.99`` (no strength tested stopped the attacker) or ``<= 0.1 (...)`` (the weakest
    strength tested already did)."""
    thr = to_float(row.get(f"threshold{suffix}"))
    tested = [float(v) for v in (row.get("tested") or "").split(";") if v.strip()]
    if thr is None:
        if suffix == "" and row.get("leaked", "") == "" and not row.get("decoys"):
            return "no decoys"
        return f"> {_fmt_strength(row.get('strongest_tested'))}"
    below = "<= " if tested and thr == tested[0] else ""
    k, n = to_int(row.get(f"leaked{suffix}")), to_int(row.get(f"n{suffix}"))
    if k is None or not n:
        return f"{below}{thr:g}"
    return f"{below}{thr:g} ({k}/{n}, <= {pct(to_float(row.get(f'leak_upper95{suffix}')))})"


def _setting_table(config: dict) -> str:
    setting = config.get("setting", {})
    rows = [[code(k), code(v)] for k, v in setting.items() if v not in ("", None)]
    extra = [("defenses", ", ".join(config.get("defenses", []))), ("attackers", ", ".join(config.get("attackers", []))),
             ("images per cell (--n)", config.get("n")), ("--max-leak-rate", config.get("max_leak_rate")),
             ("preset (--setting)", config.get("preset"))]
    rows += [[esc(k), code(v)] for k, v in extra if v not in ("", None)]
    for name, grid in (config.get("grids") or {}).items():
        rows.append([esc(f"grid of {name}"), code(", ".join(f"{v:g}" for v in grid))])
    return table(["key", "value"], rows)


def _cell_order(cell: dict, config: dict) -> tuple:
    """Attackers and defenses in the sweep's order (no defense first), strengths weakest first."""
    attackers = list(config.get("attackers") or [])
    defenses = list(config.get("defenses") or [])
    grid = [float(v) for v in (config.get("grids") or {}).get(cell["defense"], [])]
    strength = to_float(cell["strength"]) or 0.0
    return (attackers.index(cell["attacker"]) if cell["attacker"] in attackers else len(attackers), cell["attacker"],
            -1 if cell["defense"] == "none" else defenses.index(cell["defense"]) if cell["defense"] in defenses
            else len(defenses), cell["defense"], grid.index(strength) if strength in grid else strength)


def _cells_table(cells: list[dict]) -> str:
    return table(["attacker", "defense", "strength", "identified", "paper criterion", "failed", "mean SSIM",
                  "mean adj. SSIM", "label accuracy", "s"],
                 [[esc(c["attacker"]) + (" (= naive)" if c.get("same_as") else ""), esc(c["defense"]),
                   "-" if c["defense"] == "none" else _fmt_strength(c["strength"]),
                   leak_bound(c.get("leaked"), c["n"], to_float(c.get("leak_upper95"))),
                   leak_bound(c.get("leaked_paper"), c["n"], to_float(c.get("leak_upper95_paper"))),
                   c.get("failed", "-"), fixed(c.get("ssim_mean"), 3), fixed(c.get("ssim_adjusted_mean"), 3),
                   fixed(c.get("label_acc"), 2), fixed(c.get("seconds"), 1)] for c in cells])


def sweep_section(res: Result) -> str:
    folder = res.folder
    out = [f"## {esc(res.name.removeprefix('sweep-'))}", "", provenance(res)]
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if config:
        out += ["### Setting", "", _setting_table(config)]
    thresholds = read_csv(folder / "thresholds.csv") if (folder / "thresholds.csv").is_file() else []
    cells = read_csv(folder / "cells.csv") if (folder / "cells.csv").is_file() else []
    for ds in dict.fromkeys([r["dataset"] for r in thresholds] + [c["dataset"] for c in cells]):
        rows = [r for r in thresholds if r["dataset"] == ds]
        dcells = [c for c in cells if c["dataset"] == ds]
        out += [f"### Thresholds: `{esc(ds)}`", ""]
        if rows:
            rows = sorted(rows, key=lambda r: _cell_order({**r, "strength": 0}, config)[2:4] + _cell_order(
                {**r, "strength": 0}, config)[:2])
            out += ["The weakest strength at which a defense stops the attacker and that stays stopped at every "
                    "stronger strength tested, under both criteria, with its cell's leaked/n and the 95% "
                    "Clopper-Pearson upper bound of its leak rate; `> X`: no strength up to X stopped the "
                    "attacker; `<= X`: the weakest strength tested already did.", "",
                    table(["defense", "attacker", "threshold (identification)", "threshold (paper criterion)",
                           "undefended leak rate (identification / paper)", "strengths tested"],
                          [[esc(r["defense"]), esc(r["attacker"]), threshold_text(r, ""),
                            threshold_text(r, "_paper"),
                            f"{pct(r.get('undefended_leak_rate'))} / {pct(r.get('undefended_leak_rate_paper'))}",
                            esc(", ".join(v for v in (r.get("tested") or "").split(";") if v))] for r in rows])]
            found = sum(1 for r in rows if to_float(r.get("threshold")) is not None)
            found_paper = sum(1 for r in rows if to_float(r.get("threshold_paper")) is not None)
            out += [f"A threshold was found for {found} of the {len(rows)} (defense, attacker) pairs under "
                    f"identification and for {found_paper} under the paper criterion.", ""]
            out += [_criteria_compared(rows), ""]
            weak = _weak_attack(rows)
            if weak:
                out += [weak, ""]
        if dcells:
            dcells = sorted(dcells, key=lambda c: _cell_order(c, config))
            out += [f"??? info \"Every cell of `{esc(ds)}` ({len(dcells)})\"", "",
                    indent(_cells_table(dcells)), ""]
    out.append(figure(res, "leak_vs_strength.png", "leak rate against strength, per defense and attacker, "
                      "both criteria (band: 95% upper bound; dashed: no defense)"))
    return "\n".join(out)


def _criteria_compared(rows: list[dict]) -> str:
    """What the identification criterion changes against the paper's, pair by pair."""
    moved = [f"{esc(r['defense'])}/{esc(r['attacker'])}: {threshold_text(r, '').split(' (')[0]} against "
             f"{threshold_text(r, '_paper').split(' (')[0]}" for r in rows
             if to_float(r.get("threshold")) != to_float(r.get("threshold_paper"))]
    if not moved:
        return "The identification criterion and the paper's give the same threshold for every pair."
    return ("Where the identification criterion and the paper's disagree (identification against paper): "
            + "; ".join(moved) + ".")


def _weak_attack(rows: list[dict]) -> str:
    """A warning when the undefended attack identifies fewer than half of the images: the
    thresholds then bound the attack's strength as much as the defense's."""
    rates = [to_float(r.get("undefended_leak_rate")) for r in rows]
    rates = [v for v in rates if v is not None]
    if not rates or min(rates) >= 0.5:
        return ""
    return (f"!!! warning \"A weak attack on this kind of data\"\n\n    Without a defense the attack identifies only "
            f"{pct(min(rates))} of these images at this budget: a threshold here says as much about the attack's "
            "strength as about the defense's, and a stronger attack may need a stronger defense.")


def sweeps_page(results_dir: Path) -> str:
    head = ["# Experiment 1: thresholds (sweeps)", "",
            "Per defense, attacker and kind of data, the weakest strength at which the attack stops leaking, "
            "measured on the uploads the federation trains with (see [Experiments](../experiments.md#sweep)). "
            "One section per committed sweep folder `docs/results/sweep-<kind>/`.", ""]
    folders = folder_names(results_dir, "sweep-*")
    if not folders:
        return "\n".join(head) + "\n" + not_measured("docs/results/sweep-<kind>", SWEEP_COMMAND)
    return "\n".join(head) + "\n" + "\n".join(sweep_section(find(results_dir, name)) for name in folders)


# ------------------------------------------------------------------------------ speed

BENCH_FEDERATION_COMMAND = ("python -m benchmarks.bench_federation --sizes 10:1.0,100:0.1,1000:0.01 --rounds 20 "
                            "--flower-poll off,0.005 --out docs/results/bench_federation")
MAIN_JOB_COMMAND = "python -m benchmarks.main_job --out docs/results/main_job --workers 1,0,2 --copies 2 --pairs 3"


def _federation_section(res: Result) -> str:
    head = ["## Flower's round overhead", "",
            "The same local training per round by plain PyTorch in one process and by the Flower simulation, "
            "the same clients sampled each round (see [Speed](../speed.md#federations-of-10-to-1000-clients)); "
            "`poll` is `FL_DEFENSE_FLOWER_POLL` (`off`: Flower's own 0.1 s polling).  Seconds per round are the "
            "median of rounds 2 and after; with repeats (plain and Flower alternating), the median over the repeats, "
            "and the ratio the median of the repeats' ratios, each listed.", ""]
    path = res.data("bench_federation.json")
    if path is None:
        return missing_page(head, res, BENCH_FEDERATION_COMMAND)
    rows = read_json(path)["rows"]
    body = [provenance(res), table(
        ["clients", "trained per round", "poll (s)", "rounds", "repeats", "plain s/round", "Flower s/round", "ratio",
         "each repeat's ratio", "accuracy plain", "accuracy Flower"],
        [[r["clients"], r["sampled"], esc(r["poll"]), r["rounds"], r.get("repeats", 1), fixed(r["plain_s_per_round"], 3),
          fixed(r["flower_s_per_round"], 3), f"{r['ratio']:.2f}x",
          " ".join(f"{x:.2f}x" for x in r.get("ratios", [r["ratio"]])), fixed(r["plain_accuracy"], 4),
          fixed(r["flower_accuracy"], 4)] for r in rows])]
    for clients in dict.fromkeys(r["clients"] for r in rows):
        by_poll = {r["poll"]: r for r in rows if r["clients"] == clients}
        if "off" in by_poll and len(by_poll) > 1:
            other = next(r for p, r in by_poll.items() if p != "off")
            body.append(f"At {clients} clients a round takes {fixed(by_poll['off']['flower_s_per_round'], 3)} s "
                        f"with Flower's own polling and {fixed(other['flower_s_per_round'], 3)} s at "
                        f"{esc(other['poll'])} s: {by_poll['off']['ratio']:.2f}x and {other['ratio']:.2f}x the "
                        f"plain loop.\n")
    return "\n".join(head + body)


def _main_job_section(res: Result) -> str:
    head = ["## The main job", "",
            "`python run_sim.py` alone and beside copies of itself started at the same time, each a fresh process "
            "as a user starts it, for each number of attack worker processes compared (`--attack-workers`; the "
            "runs alone alternate between them); identified leaks of the hook per round as k/n.", ""]
    path = res.data("main_job.json")
    if path is None:
        return missing_page(head, res, MAIN_JOB_COMMAND)
    data = read_json(path)
    copies = data["copies"]

    def label(kind: dict) -> str:
        return f"--attack-workers {kind['attack_workers']}" + (" (default)" if kind["default"] else "")

    runs = ([(f"alone {i + 1}, {label(k)}", r) for k in data["kinds"] for i, r in enumerate(k["alone"])]
            + [(f"copy {i + 1} of {copies}, {label(k)}", r) for k in data["kinds"]
               for i, r in enumerate(k["side_by_side"])])
    others = f"{copies - 1} other cop{'y' if copies == 2 else 'ies'}"
    body = [provenance(res), table(
        ["attack workers", f"median alone, {data['pairs']} runs (s)", f"mean beside {others} (s)", "slowdown"],
        [[esc(label(k)), fixed(k["median_alone"], 1), fixed(statistics.mean(r["seconds"] for r in k["side_by_side"]), 1),
          f"{k['slowdown']:.2f}x"] for k in data["kinds"]]),
        "The slowdown is the mean wall-clock time of the copies side by side over the median time alone, of the "
        "same number of attack workers; `(default)` marks what `run_sim.py` sets on the machine measured.", "",
        table(["run", "seconds", "rounds", "identified per round", "paper criterion per round", "final accuracy"],
              [[esc(name), fixed(r["seconds"], 1), r["rounds"],
                " ".join(f"{k}/{n}" for k, n in zip(r["leaked"], r["images"])) or "-",
                " ".join(f"{k}/{n}" for k, n in zip(r["leaked_paper"], r["images"])) or "-",
                fixed(r["final_accuracy"], 4)] for name, r in runs])]
    return "\n".join(head + body)


def speed_page(results_dir: Path) -> str:
    head = ["# Speed", "",
            "Measured side by side in one invocation of each benchmark, on the machine and date shown; "
            "[Speed](../speed.md) says what each benchmark does and how to run it.", ""]
    return "\n".join(head + [_federation_section(find(results_dir, "bench_federation")),
                              _main_job_section(find(results_dir, "main_job"))])


# ------------------------------------------------------------------------------ overview

PAGES: dict[str, tuple[str, Callable[[Path], str]]] = {
    "results/null-floor.md": ("Null floor", null_floor_page),
    "results/leak-map.md": ("Leak map", leak_map_page),
    "results/sweeps.md": ("Experiment 1: thresholds", sweeps_page),
    "results/training-grid.md": ("Experiment 2: the training grid", grid_page),
    "results/speed.md": ("Speed", speed_page),
}


def index_page(results_dir: Path) -> str:
    entries = [("null-floor.md", "Null floor", "null_floor", [find(results_dir, "null_floor", "null_floor.json")]),
               ("leak-map.md", "Leak map", "leak_map*", leak_map_folders(results_dir)),
               ("leak-map.md", "Leak map: the attack's choices", "attack_choices-*",
                attack_choices_folders(results_dir)),
               ("leak-map.md", "Leak map: what the labels of a batch change", "label_spread-*",
                label_spread_folders(results_dir)),
               ("sweeps.md", "Experiment 1: thresholds", "sweep-<kind>",
                [find(results_dir, name) for name in folder_names(results_dir, "sweep-*")]),
               ("training-grid.md", "Experiment 2: the training grid", "grid", [find(results_dir, "grid")]),
               ("speed.md", "Speed: Flower's rounds", "bench_federation", [find(results_dir, "bench_federation")]),
               ("speed.md", "Speed: the main job", "main_job", [find(results_dir, "main_job")])]
    rows = []
    for page, title, folder, found in entries:
        found = [r for r in found if r.measured]
        if not found:
            rows.append([f"[{title}]({page})", code(f"docs/results/{folder}"), NOT_MEASURED.lower(), "-"])
        for r in found:
            rows.append([f"[{title}]({page})", code(f"docs/results/{r.name}"), esc(r.date or "not recorded"),
                         code(r.command) if r.command else "not recorded"])
    return "\n".join([
        "# Results", "",
        "Every page of this section is rendered, when the site is built, from the result files committed under "
        "`docs/results/` (each folder: the experiment's own CSV/JSON and figures, and a `meta.json` with the "
        "command that made it and its date).  No number on these pages is typed by hand; a result not yet "
        "committed reads \"not yet measured\".  [About these docs](../about-the-docs.md#results) says how to add "
        "one.", "",
        table(["page", "folder", "date", "command"], rows)])
