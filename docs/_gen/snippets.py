"""The tables and text that the hand-written pages include with a ``<!-- gen:NAME -->``
line (:data:`SNIPPETS`), read off the code: the import-linter contracts, the setting's keys
and presets, the main job's columns, the registries' tables, the defenses' and the engine's
settings, the Clopper-Pearson bounds and the accountant's epsilon."""

from __future__ import annotations

import dataclasses
import inspect
import tomllib

from _gen.reference import (PYPROJECT, aware_objectives_table, defense_sections, defenses_table,
                            objectives_table)
from _gen.text import code, esc, first_sentence, prose, table, without_measurements


def import_contracts() -> str:
    """The import-linter contracts of ``pyproject.toml``."""
    contracts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    out = []
    for c in contracts:
        if c["type"] == "layers":
            out += [f"**{esc(c['name'])}** (`layers`, top floor first):", ""]
            out += [f"{i}. " + " \\| ".join(code(p.strip()) for p in layer.split("|"))
                    for i, layer in enumerate(c["layers"], 1)]
            out.append("")
        elif c["type"] == "forbidden":
            out += [f"**{esc(c['name'])}** (`forbidden`): no module of "
                    + ", ".join(code(s) for s in c["source_modules"]) + " imports "
                    + ", ".join(code(m) for m in c["forbidden_modules"])
                    + (" (direct imports are checked)" if str(c.get("allow_indirect_imports")).lower() == "true"
                       else "") + ".", ""]
        else:
            out += [f"**{esc(c['name'])}** (`{esc(c['type'])}`)", ""]
    return "\n".join(out)


def setting_keys() -> str:
    from experiments.setting import ATTACK_KEYS, CONTEXT_KEYS, UPDATE_KEYS
    from fl_defense.config import ExperimentConfig

    d = ExperimentConfig().to_run_config()
    rows = []
    for group, keys, role in (("update", UPDATE_KEYS, "must agree between a sweep and the grid that uses its "
                                                      "thresholds"),
                              ("context", CONTEXT_KEYS, "recorded, may differ"),
                              ("attack", ATTACK_KEYS, "recorded, may differ")):
        for k in keys:
            rows.append([code(k), code(d[k]), group, esc(role)])
    return table(["key", "default (the shared setting)", "group", "between sweep and grid"], rows)


def presets() -> str:
    from experiments.setting import PRESETS

    return table(["--setting", "keys over the defaults"],
                 [[code(name), ", ".join(code(f"{k}={v}") for k, v in keys.items()) or "(the defaults)"]
                  for name, keys in PRESETS.items()])


def main_job_columns() -> str:
    """The run's table: each column's title, its ``metrics.jsonl`` key and its meaning, as
    the code that prints the table (and its legend) declares them."""
    from experiments.cli import COLUMNS

    return table(["column", "metrics.jsonl key", "meaning"],
                 [[code(title), code(key), esc(meaning)] for key, title, _, meaning in COLUMNS])


def _dataclass_attributes(cls) -> list[tuple[str, object, str]]:
    """``(field, default, first sentence of its description)`` of a dataclass documented
    with a Google- or numpy-style ``Attributes`` section."""
    import griffe

    from _gen.griffe_docstrings import numpydoc_entries

    doc = numpydoc_entries(inspect.cleandoc(cls.__doc__ or ""))
    descr: dict[str, str] = {}
    for style in ("google", "numpy"):
        sections = griffe.Docstring(doc).parse(style)
        for s in sections:
            if s.kind.value == "attributes":
                for a in s.value:
                    for name in a.name.split(","):
                        descr.setdefault(name.strip(), a.description or (a.annotation or ""))
        if descr:
            break
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            "(required)" if f.default_factory is dataclasses.MISSING else f.default_factory())
        out.append((f.name, default, first_sentence(without_measurements(str(descr.get(f.name, "")))) or "-"))
    return out


def defense_fields() -> str:
    from fl_defense.defenses.base import Defense

    return table(["field", "default", "meaning"],
                 [[code(n), code(repr(v)) if v != "(required)" else "required", prose(t)]
                  for n, v, t in _dataclass_attributes(Defense)])


def engine_settings() -> str:
    from attacks.settings import AttackConfig
    from attacks.updates import UpdateAttackOptions

    rows = [[code(f"AttackConfig.{n}"), code(repr(v)), prose(t)] for n, v, t in _dataclass_attributes(AttackConfig)]
    rows += [[code(f"UpdateAttackOptions.{n}"), code(repr(v)), prose(t)]
             for n, v, t in _dataclass_attributes(UpdateAttackOptions)]
    return table(["setting", "default", "meaning"], rows)


def cp_bounds() -> str:
    from fl_defense.stats import leak_upper95

    ns = (8, 16, 32, 64, 128, 256)
    return table(["images n", *[str(n) for n in ns]],
                 [["95% upper bound with 0 leaks", *[f"{100 * leak_upper95(0, n):.1f}%" for n in ns]]])


def epsilon_table() -> str:
    """Epsilon of Z-noised Gaussian releases, exact and through Flower's RDP accountant."""
    from fl_defense.config import ExperimentConfig
    from fl_defense.privacy import gaussian_epsilon, gaussian_epsilon_rdp

    cfg = ExperimentConfig()
    zs, rounds = (0.5, 1.0, 2.0, 5.0), (1, 10, 20, 100)
    rows = [[f"{z:g}", *[f"{gaussian_epsilon(z, k, cfg.dp_delta, cfg.dp_neighbouring):.3g} / "
                         f"{gaussian_epsilon_rdp(z, k, cfg.dp_delta, cfg.dp_neighbouring):.3g}" for k in rounds]]
            for z in zs]
    return (f"delta = {cfg.dp_delta:g} (the default `dp-delta`), `{cfg.dp_neighbouring}`; each cell: exact / "
            "Flower's RDP.\n\n" + table(["Z", *[f"{k} release{'s' if k > 1 else ''}" for k in rounds]], rows))


SNIPPETS = {
    "cp-bounds": cp_bounds,
    "epsilon-table": epsilon_table,
    "import-contracts": import_contracts,
    "setting-keys": setting_keys,
    "presets": presets,
    "main-job-columns": main_job_columns,
    "defenses-table": defenses_table,
    "defense-sections": defense_sections,
    "aware-objectives": aware_objectives_table,
    "objectives": objectives_table,
    "defense-fields": defense_fields,
    "engine-settings": engine_settings,
}
