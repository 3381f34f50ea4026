"""The manual builds strictly (``mkdocs build --strict``: a broken link, a missing page, an
unreadable docstring or a generated table the code no longer supports fails), and the
Results pages render the result files in the formats the experiments write them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS_MODULES = {"mkdocs": "mkdocs", "material": "mkdocs-material", "mkdocstrings": "mkdocstrings",
                "mkdocstrings_handlers.python": "mkdocstrings-python", "mkdocs_gen_files": "mkdocs-gen-files"}


def _missing_docs_packages() -> list[str]:
    missing = []
    for module, package in DOCS_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(package)
    return missing


def test_the_manual_builds_strictly(tmp_path):
    missing = _missing_docs_packages()
    if missing:
        pytest.fail(f"the manual's build needs the docs extra (pip install -e '.[docs]'); missing: "
                    f"{', '.join(missing)}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    for page in ("index.html", "reference/cli/index.html", "reference/config/index.html",
                 "reference/registries/index.html", "defenses/index.html", "results/index.html",
                 "reference/api/fl_defense.scoring/index.html"):
        assert (site / page).is_file(), page
    cli = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    assert "--grid-masking" in cli and "--resume" in cli  # generated from the parsers
    assert seconds < 300, f"the build took {seconds:.0f} s"


# ------------------------------------------------------------------ the Results pages


def _results_module():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from _gen import results
    finally:
        sys.path.remove(str(ROOT / "docs"))
    return results


def _sweep_folder(folder: Path) -> None:
    """A sweep folder written by the sweep's own report functions from fabricated cells."""
    from experiments.setting import SETTING_KEYS
    from experiments.sweep_cells import cell_counts, thresholds_from_cells
    from experiments.sweep_report import CELL_FIELDS, THRESHOLD_FIELDS, _csv

    setting = {"dataset": "mnist-embedded", "model": "tanhcnn", "lr": 0.3}
    grids = {"masking": [0.5, 0.9]}
    cells = []
    for attacker in ("naive", "aware"):
        for defense, strength, leaks in (("none", 0.0, 4), ("masking", 0.5, 1), ("masking", 0.9, 0)):
            rows = [{"leaked": i < leaks, "leaked_paper": i < leaks + 1, "failed": False} for i in range(4)]
            cells.append({"dataset": "mnist-embedded", "attacker": attacker, "defense": defense,
                          "strength": strength, "spec": defense, "setting": setting, "decoys": "pool",
                          "ssim_mean": 0.5, "ssim_adjusted_mean": 0.6, "label_acc": 1.0, "clients": 1,
                          "seconds": 2.0, **cell_counts(rows)})
    folder.mkdir(parents=True)
    _csv(folder / "cells.csv", cells, CELL_FIELDS)
    _csv(folder / "thresholds.csv", thresholds_from_cells(cells, grids, 0.0),
         THRESHOLD_FIELDS + [k for k in SETTING_KEYS if k != "dataset"])
    (folder / "config.json").write_text(json.dumps({"setting": setting, "defenses": ["masking"],
                                                    "attackers": ["naive", "aware"], "grids": grids, "n": 4}))
    (folder / "meta.json").write_text(json.dumps({"command": "python run_sim.py sweep --n 4", "date": "2025-01-02"}))


def test_results_pages_render_the_result_files(tmp_path):
    results = _results_module()
    empty = tmp_path / "none"
    for name, (_, render) in results.PAGES.items():
        assert results.NOT_MEASURED in render(empty), name

    d = tmp_path / "results"
    (d / "null_floor").mkdir(parents=True)
    row = {"kind": "digits", "dataset": "mnist-embedded", "null": "label-only", "n": 8, "decoys": "pool",
           "leak_threshold": 0.4}
    for c, k in (("paper", 3), ("identification", 1), ("identification_same_label", 2)):
        row.update({f"{c}_leaked": k, f"{c}_rate": k / 8, f"{c}_ci95_low": 0.01, f"{c}_ci95_high": 0.5})
    (d / "null_floor" / "null_floor.json").write_text(json.dumps(
        {"command": "python -m benchmarks.null_floor --n 8", "date": "2025-01-01", "rows": [row]}))
    page = results.null_floor_page(d)
    assert "python -m benchmarks.null_floor --n 8" in page and "2025-01-01" in page
    assert "12.5% (1/8" in page and "at most 12.5%" in page

    _sweep_folder(d / "sweep-digits")
    page = results.sweeps_page(d)
    assert "python run_sim.py sweep --n 4" in page and "2025-01-02" in page
    assert "0.9 (0/4, <= 60.2%)" in page  # the threshold with its cell's count and 95% bound
    assert results.NOT_MEASURED in results.grid_page(d)
    index = results.index_page(d)
    assert "docs/results/sweep-digits" in index and "docs/results/null_floor" in index

    # a grid whose leak columns came from another sweep run: the page counts what agrees
    grid = d / "grid"
    grid.mkdir()
    (grid / "config.json").write_text(json.dumps({"setting": {"dataset": "mnist-embedded"}}))
    (grid / "meta.json").write_text(json.dumps({"command": "python run_sim.py train --thresholds X", "date": "2025-01-03"}))
    fields = ["defense", "strength", "spec", "aggregation", "partition", "final_accuracy", "leaked_naive", "n_naive",
              "leak_upper95_naive", "leaked_aware", "n_aware", "leak_upper95_aware", "hook_leak_rate"]

    def write_grid(aware_leaks_at_masking):
        lines = [",".join(fields)]
        for partition in ("iid", "dirichlet"):
            lines += [f"none,0.0,none,mean,{partition},0.9,4,4,1.0,4,4,1.0,",
                      f"masking,0.5,masking:0.5,mean,{partition},0.8,1,4,0.8,{aware_leaks_at_masking},4,0.9,"]
        (grid / "final_accuracy.csv").write_text("\n".join(lines) + "\n")

    write_grid(2)
    page = results.grid_page(d)
    assert "3 of its 4 (defense, strength, attacker) entries equal the cell at the same strength" in page
    write_grid(1)
    assert "entries equal the cell" not in results.grid_page(d)


def test_the_leak_map_page_says_where_leakage_stops(tmp_path):
    results = _results_module()
    d = tmp_path / "results" / "leak_map"
    d.mkdir(parents=True)

    def cell(b, k, leaked, n=8):
        return {"kind": "digits", "dataset": "mnist-embedded", "B": b, "K": k, "N": b * k, "clients": 1, "n": n,
                "leaked": leaked, "leak_rate": leaked / n, "ci95_low": 0.0, "ci95_high": 1.0, "leaked_paper": n,
                "ci95_low_paper": 0.5, "ci95_high_paper": 1.0, "failed": 0, "label_acc": 1.0,
                "seconds_per_client": 1.0, "model": "tanhcnn"}

    rows = [cell(1, 1, 8), cell(2, 1, 6), cell(4, 1, 2), cell(2, 2, 5), cell(8, 1, 0)]
    rows[2]["by_label"] = [{"label": 3, "name": "three", "images": 5, "leaked": 2, "leaked_paper": 5},
                           {"label": 1, "name": "one", "images": 3, "leaked": 0, "leaked_paper": 3}]
    (d / "leak_map.json").write_text(json.dumps({"command": "python -m benchmarks.leak_map --n 8 --max-n 8",
                                                 "date": "2025-01-03", "max_n": 8, "rows": rows,
                                                 "left_out": [{"kind": "digits", "B": 16, "K": 4, "N": 64,
                                                               "evaluation_images": 60}]}))
    page = results.leak_map_page(tmp_path / "results")
    assert "python -m benchmarks.leak_map --n 8" in page and "2025-01-03" in page
    # N = 4 holds a cell below one half (B=4, K=1): every cell identifies half up to N = 2 only
    assert "every cell up to N = 2 images a client; none is identified at B=8, K=1." in page
    assert "Cells with more than 8 images a client (N = K B) were not run" in page
    assert "identified: one | identified: three |" in page and "| 0/3 | 2/5 |" in page   # label order
    assert "Left out: digits B=16, K=4: a client's epoch of N = 64 images is more than the 60 images" in page
    assert "attack's choices" not in page   # no attack_choices folder: no section
    c = tmp_path / "results" / "attack_choices-digits"
    c.mkdir()
    by = [{"label": 0, "name": "non-face", "images": 4, "leaked": 1, "leaked_paper": 2},
          {"label": 1, "name": "face", "images": 4, "leaked": 4, "leaked_paper": 4}]
    variants = [{**cell(4, 1, 5), "variant": "base", "keys": {}, "split": "tuning", "lr": 0.3, "by_label": by},
                {**cell(4, 1, 7), "variant": "tv-0", "keys": {"attack-tv": 0}, "split": "tuning", "lr": 0.3,
                 "seconds_per_client": 2.5}]
    (c / "attack_choices.json").write_text(json.dumps({"command": "python -m benchmarks.attack_choices --n 8",
                                                      "date": "2025-01-04", "B": 4, "K": 1,
                                                      "base": {"attack-restarts": 2}, "rows": variants}))
    page = results.leak_map_page(tmp_path / "results")
    assert "python -m benchmarks.attack_choices --n 8" in page and "2025-01-04" in page
    assert "keys under every variant: attack-restarts 2" in page and "attack-tv=0" in page
    assert "identified: non-face" in page and "| 1/4 | 4/4 |" in page and "| - | - |" in page
    assert "Most identified: `tv-0`, 7/8 against 5/8 for `base`, at 2.5x its seconds per client." in page
    assert "attack_choices-digits" in results.index_page(tmp_path / "results")
    assert "labels of a batch" not in page   # no label_spread folder: no section
    s = tmp_path / "results" / "label_spread-faces"
    s.mkdir()
    spread = [{**cell(4, 1, 3), "labelling": "real", "num_classes": 2, "first_client_labels": [0, 1, 1, 0],
               "lr": 0.3, "attack_max_iter": 2000, "attack_restarts": 1, "attack_tv": 0.001, "by_label": by,
               "sv_median_ratio": 0.0043, "sv_min_ratio": 1.1e-4},
              {**cell(4, 1, 8), "labelling": "distinct-10", "num_classes": 10, "first_client_labels": [0, 1, 2, 3],
               "lr": 0.3, "attack_max_iter": 2000, "attack_restarts": 1, "attack_tv": 0.001,
               "sv_median_ratio": 0.31, "sv_min_ratio": 0.04}]
    (s / "label_spread.json").write_text(json.dumps({"command": "python -m benchmarks.label_spread --n 8",
                                                    "date": "2025-01-05", "B": 4, "K": 1, "split": "evaluation",
                                                    "base": {}, "rows": spread}))
    page = results.leak_map_page(tmp_path / "results")
    assert "python -m benchmarks.label_spread --n 8" in page and "2025-01-05" in page
    assert "8 images of the evaluation split" in page and "| 0, 1, 2, 3 |" in page
    assert "| 4.3e-03 | 1.1e-04 |" in page and "| 1/4 | 4/4 |" in page
    assert ("Fewest identified: `real`, 3/8 (median ratio 4.3e-03); most: `distinct-10`, 8/8 "
            "(median ratio 3.1e-01).") in page
    assert "label_spread-faces" in results.index_page(tmp_path / "results")


def test_the_generated_pages_are_not_in_the_source_tree():
    """The generated pages exist only in the built site: a copy in ``docs/`` (left by running
    ``docs/gen_pages.py`` outside a build, which also fills the markers of the hand-written
    pages in place) would be served instead of what the code and result files give."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from _gen.results import PAGES
    finally:
        sys.path.remove(str(ROOT / "docs"))
    generated = ["reference/cli.md", "reference/config.md", "reference/registries.md", "results/index.md", *PAGES]
    present = [name for name in generated if (ROOT / "docs" / name).exists()]
    assert not present, f"generated pages in docs/ (delete them): {present}"
    for page in ("getting-started.md", "defenses.md", "attacks.md"):
        assert "<!-- gen:" in (ROOT / "docs" / page).read_text(encoding="utf-8"), page
