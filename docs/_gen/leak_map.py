"""The Leak map results page: every ``docs/results/leak_map*/`` folder (``leak_map.json``
and ``leak_map.png`` of ``python -m benchmarks.leak_map``), one section per invocation, and
every ``docs/results/attack_choices-*/`` folder (``attack_choices.json`` of ``python -m
benchmarks.attack_choices``: the attack's choices measured on the tuning split) and every
``docs/results/label_spread-*/`` folder (``label_spread.json`` of ``python -m
benchmarks.label_spread``: the same images attacked under other labellings)."""

from __future__ import annotations

from pathlib import Path

from _gen.result_files import figure, find, fixed, folder_names, missing_page, provenance, rate_ci, read_json
from _gen.text import code, esc, fmt_number, pct, table

LEAK_MAP_COMMAND = "python -m benchmarks.leak_map --out docs/results/leak_map"
SETTING_COLUMNS = (("model", "model"), ("lr", "lr"), ("attack_max_iter", "attack-max-iter"),
                   ("attack_restarts", "attack-restarts"), ("attack_patience", "attack-patience"),
                   ("attack_tv", "attack-tv"), ("decoys", "decoys"))


def leak_map_folders(results_dir: Path) -> list:
    """The leak-map result folders: ``leak_map`` and every ``leak_map-<name>`` (one
    invocation of the benchmark each, e.g. one per kind of data)."""
    names = ["leak_map"] + folder_names(results_dir, "leak_map-*")
    return [find(results_dir, name, "leak_map.json") for name in names]


def leak_map_page(results_dir: Path) -> str:
    head = ["# Leak map", "",
            "Where leakage stops for this attack, over the batch size B and the number of local steps K: "
            "clients train K SGD steps of B over N = K B images (one epoch), no defense, and the server "
            "inverts every upload with labels inferred; every image is scored by both criteria against the "
            "data set's test split.  See `benchmarks/leak_map.py`.  Each section below is one invocation "
            "of the benchmark, with its command.", ""]
    found = [res for res in leak_map_folders(results_dir) if res.data("leak_map.json") is not None]
    if not found:
        return missing_page(head, leak_map_folders(results_dir)[0], LEAK_MAP_COMMAND)
    body = []
    for res in found:
        body += _leak_map_section(res, several=len(found) > 1)
    return "\n".join(head + body + attack_choices_sections(results_dir) + label_spread_sections(results_dir))


def attack_choices_folders(results_dir: Path) -> list:
    """The ``attack_choices-<name>`` result folders (one invocation each)."""
    names = folder_names(results_dir, "attack_choices-*")
    return [find(results_dir, name, "attack_choices.json") for name in names]


def attack_choices_sections(results_dir: Path) -> list[str]:
    """One section per ``attack_choices-*`` folder: every variant's keys and both criteria's
    counts on the tuning split (identified per label too, for up to four labels), and which
    variant identified the most against the base."""
    found = [res for res in attack_choices_folders(results_dir) if res.data("attack_choices.json") is not None]
    if not found:
        return []
    body = ["## The attack's choices, measured on the tuning split", "",
            "Each variant lays config keys over the base setting and attacks the same images of the data set's "
            "tuning split (its test split, left out of the decoy pool); the tables above report on the "
            "evaluation split.  See `benchmarks/attack_choices.py`.", ""]
    for res in found:
        data = read_json(res.data("attack_choices.json"))
        rows = data["rows"]
        labels = _label_names(rows)
        base_keys = "; ".join(f"{esc(k)} {esc(fmt_number(v))}" for k, v in data.get("base", {}).items()) or "none"
        body += [f"### {esc(res.name)}", "", provenance(res),
                 f"{esc(rows[0]['kind'])} (`{esc(rows[0]['dataset'])}`), B={data['B']}, K={data['K']}, "
                 f"{rows[0]['n']} tuning images, model {esc(rows[0]['model'])}, lr {fmt_number(rows[0]['lr'])}; "
                 f"keys under every variant: {base_keys}.", "",
                 table(["variant", "keys", "identified", "paper criterion",
                        *[f"identified: {esc(name)}" for name in labels], "label accuracy", "s per client"],
                       [[code(r["variant"]),
                         ", ".join(f"{esc(k)}={esc(fmt_number(v))}" for k, v in r["keys"].items()) or "(base)",
                         rate_ci(r["leaked"], r["n"], r["ci95_low"], r["ci95_high"]),
                         rate_ci(r["leaked_paper"], r["n"], r["ci95_low_paper"], r["ci95_high_paper"]),
                         *[_label_count(r, name) for name in labels],
                         fixed(r.get("label_acc"), 2), fixed(r.get("seconds_per_client"), 1)] for r in rows]),
                 _best_choice(rows), ""]
    return body


def label_spread_folders(results_dir: Path) -> list:
    """The ``label_spread-<name>`` result folders (one invocation each)."""
    return [find(results_dir, name, "label_spread.json") for name in folder_names(results_dir, "label_spread-*")]


def label_spread_sections(results_dir: Path) -> list[str]:
    """One section per ``label_spread-*`` folder: every labelling's counts by both criteria
    (identified per label of the data set too) and the singular-value ratios of the first
    client's inverse problem, with the labellings that identified the fewest and the most."""
    found = [res for res in label_spread_folders(results_dir) if res.data("label_spread.json") is not None]
    if not found:
        return []
    body = ["## What the labels of a batch change", "",
            "The same images attacked under other labellings, in one setting: the data set's own labels "
            "(`real`), C classes with every client's images under different labels (`distinct-C`), or "
            "under one label a client (`shared-C`).  The last two columns describe the inverse problem at the "
            "first client's private images: the median and the smallest singular value of the Jacobian of its "
            "upload with respect to its images, as ratios to the largest.  Only the scorer can compute them "
            "(they need the private images); the attack does not use them.  See `benchmarks/label_spread.py`.",
            ""]
    for res in found:
        data = read_json(res.data("label_spread.json"))
        rows = data["rows"]
        labels = _label_names(rows)
        body += [f"### {esc(res.name)}", "", provenance(res),
                 f"{esc(rows[0]['kind'])} (`{esc(rows[0]['dataset'])}`), B={data['B']}, K={data['K']}, "
                 f"{rows[0]['n']} images of the {esc(data['split'])} split, model {esc(rows[0]['model'])}, "
                 f"lr {fmt_number(rows[0]['lr'])}, attack-max-iter {rows[0]['attack_max_iter']}, "
                 f"attack-restarts {rows[0]['attack_restarts']}, attack-tv {fmt_number(rows[0]['attack_tv'])}.", "",
                 table(["labelling", "classes", "first client's labels", "identified", "paper criterion",
                        *[f"identified: {esc(name)}" for name in labels], "label accuracy", "s per client",
                        "median / largest", "smallest / largest"],
                       [[code(r["labelling"]), r["num_classes"], ", ".join(map(str, r["first_client_labels"])),
                         rate_ci(r["leaked"], r["n"], r["ci95_low"], r["ci95_high"]),
                         rate_ci(r["leaked_paper"], r["n"], r["ci95_low_paper"], r["ci95_high_paper"]),
                         *[_label_count(r, name) for name in labels], fixed(r.get("label_acc"), 2),
                         fixed(r.get("seconds_per_client"), 1), f"{r['sv_median_ratio']:.1e}",
                         f"{r['sv_min_ratio']:.1e}"] for r in rows]),
                 _label_spread_reading(rows), ""]
    return body


def _label_spread_reading(rows: list[dict]) -> str:
    """The labellings that identified the fewest and the most images, with their median
    singular-value ratios."""
    lo = min(rows, key=lambda r: r["leaked"])
    hi = max(rows, key=lambda r: r["leaked"])
    if lo["leaked"] == hi["leaked"]:
        return f"Every labelling identified {lo['leaked']}/{lo['n']}."
    return (f"Fewest identified: `{esc(lo['labelling'])}`, {lo['leaked']}/{lo['n']} (median ratio "
            f"{lo['sv_median_ratio']:.1e}); most: `{esc(hi['labelling'])}`, {hi['leaked']}/{hi['n']} "
            f"(median ratio {hi['sv_median_ratio']:.1e}).")


def _label_names(rows: list[dict]) -> list[str]:
    """The label names of the rows' counts per label (``by_label``), in label order, where
    there are at most four (none otherwise)."""
    names = {c["label"]: c["name"] for r in rows for c in r.get("by_label") or []}
    return [names[label] for label in sorted(names)] if len(names) <= 4 else []


def _label_count(row: dict, name: str) -> str:
    """``k/n`` identified of the images of label ``name`` (``-`` where the row has none)."""
    for c in row.get("by_label") or []:
        if c["name"] == name and c.get("leaked") is not None:
            return f"{c['leaked']}/{c['images']}"
    return "-"


def _best_choice(rows: list[dict]) -> str:
    """The variant that identified the most images, against the first row (the base)."""
    base = rows[0]
    best = max(rows, key=lambda r: (r["leaked"], -r["seconds_per_client"]))
    if best["leaked"] == base["leaked"]:
        return (f"No variant identified more than `{esc(base['variant'])}` ({base['leaked']}/{base['n']}).")
    ratio = best["seconds_per_client"] / base["seconds_per_client"] if base["seconds_per_client"] else float("nan")
    return (f"Most identified: `{esc(best['variant'])}`, {best['leaked']}/{best['n']} against "
            f"{base['leaked']}/{base['n']} for `{esc(base['variant'])}`, at {ratio:.1f}x its seconds per client.")


def _leak_map_section(res, several: bool) -> list[str]:
    data = read_json(res.data("leak_map.json"))
    rows = data["rows"]
    body = ([f"## {esc(res.name)}", ""] if several else []) + [
        provenance(res), figure(res, "leak_map.png", "identified share of the private images per cell (B, K)")]
    if data.get("max_n"):
        body += [f"Cells with more than {data['max_n']} images a client (N = K B) were not run (`--max-n`): "
                 "blank in the heat maps, absent from the tables.", ""]
    for cell in data.get("left_out") or []:
        body += [f"Left out: {esc(cell['kind'])} B={cell['B']}, K={cell['K']}: a client's epoch of N = {cell['N']} "
                 f"images is more than the {cell['evaluation_images']} images of the data set's evaluation split "
                 "(blank in the heat map).", ""]
    level = "###" if several else "##"
    for kind in dict.fromkeys(r["kind"] for r in rows):
        kr = sorted((r for r in rows if r["kind"] == kind), key=lambda r: (r["K"], r["B"]))
        recorded = [(key, label) for key, label in SETTING_COLUMNS if any(r.get(key) is not None for r in kr)]
        shared = [(label, kr[0].get(key)) for key, label in recorded
                  if all(r.get(key) == kr[0].get(key) for r in kr)]
        varying = [(key, label) for key, label in recorded if (label, kr[0].get(key)) not in shared]
        body += [f"{level} {esc(kind)} (`{esc(kr[0]['dataset'])}`)", ""]
        if shared:
            body += ["Setting of every cell: " + "; ".join(f"{label} {esc(fmt_number(v) if not isinstance(v, str) else v)}"
                                                           for label, v in shared) + ".", ""]
        labels = _label_names(kr)
        body.append(table(["B", "K", "N", "clients", "identified", "paper criterion",
                           *[f"identified: {esc(name)}" for name in labels], "failed", "label accuracy",
                           "s per client", *[label for _, label in varying]],
                          [[r["B"], r["K"], r["N"], r.get("clients", "-"),
                            rate_ci(r["leaked"], r["n"], r["ci95_low"], r["ci95_high"]),
                            rate_ci(r["leaked_paper"], r["n"], r["ci95_low_paper"], r["ci95_high_paper"]),
                            *[_label_count(r, name) for name in labels],
                            r.get("failed", "-"), fixed(r.get("label_acc"), 2),
                            fixed(r.get("seconds_per_client"), 1),
                            *[esc(fmt_number(r.get(key))) for key, _ in varying]] for r in kr]))
        body += [_where_it_stops(kr), ""]
        lo = min(kr, key=lambda r: r["leak_rate"])
        hi = max(kr, key=lambda r: r["leak_rate"])
        if lo["leak_rate"] == hi["leak_rate"]:
            body += [f"The identified share is {pct(lo['leak_rate'])} in each of the {len(kr)} cells.", ""]
        else:
            body += [f"The identified share ranges from {pct(lo['leak_rate'])} (B={lo['B']}, K={lo['K']}) to "
                     f"{pct(hi['leak_rate'])} (B={hi['B']}, K={hi['K']}) over the {len(kr)} cells.", ""]
    return body


def _where_it_stops(rows: list[dict]) -> str:
    """Where leakage stops for this attack on one kind: the largest N = K B whose cells all
    identify at least half of the images, and the cells that identify none."""
    upto = None
    for n in sorted({r["N"] for r in rows}):
        if any(r["leak_rate"] < 0.5 for r in rows if r["N"] == n):
            break
        upto = n
    none = [f"B={r['B']}, K={r['K']}" for r in rows if r["leaked"] == 0]
    first = (f"at least half of the images are identified in every cell up to N = {upto} images a client"
             if upto is not None else "no N has every cell identifying at least half of the images")
    rest = ("; none is identified at " + "; ".join(none) + "." if none
            else "; at least one image is identified in every cell.")
    return "Where leakage stops for this attack: " + first + rest
