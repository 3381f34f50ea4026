"""The reference pages and the tables of the other pages, read off the code itself: the
argparse parsers, ``ExperimentConfig`` and ``[tool.flwr.app.config]``, the registries, the
defenses' module docstrings, the import-linter contracts."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import tomllib
from pathlib import Path

from _gen.text import code, docstring_markdown, esc, table

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


# ============================================================================== CLI


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of every subcommand, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name) or "", sub))
    return out


def _flag_cell(action: argparse.Action) -> str:
    if not action.option_strings:
        return code(action.metavar or action.dest)
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return code(names)
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return code(f"{names} {metavar}")


def _default_cell(action: argparse.Action, config_keys: dict[str, str] | None = None) -> str:
    """argparse's default; for a flag that sets a config key and defaults to ``None``, the
    key and its default (linked to the configuration page); ``required`` for a required flag."""
    default = action.default
    if action.required:
        return "required"
    if default is None and config_keys and action.dest in config_keys:
        from fl_defense.config import ExperimentConfig

        key = config_keys[action.dest]
        value = ExperimentConfig().to_run_config()[key]
        return f"[`{key}`](config.md) = {code(_toml_value(value))}"
    if default is None or default is argparse.SUPPRESS or action.nargs == 0 and default in (False, None):
        return ""
    if isinstance(default, list):
        return "" if not default else code(" ".join(map(str, default)))
    return code(default)


def _help_cell(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    parts = [esc(text)] if text else []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        parts.append("choices: " + ", ".join(code(c) for c in action.choices))
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        parts.append("repeatable")
    return "; ".join(parts)


def _parser_tables(parser: argparse.ArgumentParser, name: str) -> str:
    from experiments.run_flags import RUN_FLAGS
    from experiments.setting import SETTING_FLAGS

    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if not actions:
            continue
        title = group.title
        # the flags that set a config key and default to it: run's, and every command's setting group
        keys = RUN_FLAGS if name == "run" else SETTING_FLAGS if any(a.dest == "setting" for a in actions) else None
        out += [f"**{esc(title[0].upper() + title[1:])}**", "",
                table(["flag", "default", "help"],
                      [[_flag_cell(a), _default_cell(a, keys), _help_cell(parser, a)] for a in actions])]
    return "\n".join(out)


def cli_reference() -> str:
    """Every subcommand of ``run_sim.py`` (``experiments.cli.build_parser()``): its usage and
    every flag with its default and help, as argparse has them."""
    from experiments.cli import build_parser, main as _main  # noqa: F401  (main picks ``run`` by default)

    parser = build_parser()
    subs = _subcommands(parser)
    out = ["# Command line", "",
           "Generated from `experiments.cli.build_parser()` when the site is built: every subcommand of "
           "`run_sim.py`, its usage and every flag, with the default and the help text argparse has for it. "
           "`python run_sim.py` without a subcommand runs `run`, so `python run_sim.py --rounds 3` is "
           "`python run_sim.py run --rounds 3`.  A bad flag or value stops the command before anything starts, "
           "with exit code 2 and a message naming it.", "",
           table(["subcommand", "what it does"], [[f"[`{name}`](#{name})", esc(help_)] for name, help_, _ in subs])]
    for name, help_, sub in subs:
        out += [f"## `{name}` {{ #{name} }}", "", esc(help_[0].upper() + help_[1:]) + "." if help_ else "", "",
                "```text", sub.format_usage().strip(), "```", ""]
        if sub.description and sub.description != parser.description:
            out += [esc(sub.description), ""]
        out.append(_parser_tables(sub, name))
    return "\n".join(out) + "\n"


# ============================================================================== config


def _pyproject_config_lines() -> list[tuple[str, str | None, str]]:
    """``(kind, key or None, comment)`` of every line of ``[tool.flwr.app.config]``:
    ``("key", key, comment on its line)`` or ``("group", None, a comment line)``."""
    lines = PYPROJECT.read_text(encoding="utf-8").splitlines()
    start = lines.index("[tool.flwr.app.config]")
    out = []
    for line in lines[start + 1:]:
        stripped = line.strip()
        if stripped.startswith("["):
            break
        if not stripped:
            continue
        if stripped.startswith("#"):
            out.append(("group", None, stripped.lstrip("#").strip()))
            continue
        key = stripped.split("=", 1)[0].strip()
        comment, quote = "", None
        rest = stripped.split("=", 1)[1]
        for i, ch in enumerate(rest):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "\"'":
                quote = ch
            elif ch == "#":
                comment = rest[i + 1:].strip()
                break
        out.append(("key", key, comment))
    return out


def _key_choices() -> dict[str, str]:
    """Config keys whose values are names, and the names the code accepts."""
    from experiments.run_flags import defense_choices_text
    from fl_defense import config as c
    from fl_defense.datasets import DATASETS, FOLDER_PREFIX
    from fl_defense.models import MODELS
    from fl_defense.privacy import NEIGHBOURING
    from fl_defense.strategy_catalogue import STRATEGIES

    return {"dataset": " | ".join([*DATASETS.names(), f"{FOLDER_PREFIX}/ABS/DIR"]),
            "model": MODELS.choices_text(), "defense": defense_choices_text(),
            "partition": "iid | dirichlet:ALPHA | pathological:K", "strategy": STRATEGIES.choices_text(),
            "aggregation": " | ".join(c.AGGREGATIONS), "attacker": " | ".join(c.ATTACKERS),
            "attack-method": " | ".join(c.ATTACK_METHODS), "byzantine-mode": " | ".join(c.BYZANTINE_MODES),
            "dp-neighbouring": " | ".join(NEIGHBOURING), "dp-strategy": " | ".join(c.DP_STRATEGIES)}


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def config_reference() -> str:
    """Every key of ``fl_defense.config.ExperimentConfig`` with its default, type, the ``run``
    flag that sets it, the names it accepts and the comment on its line of
    ``[tool.flwr.app.config]`` in ``pyproject.toml``."""
    from experiments.run_flags import RUN_FLAGS
    from fl_defense.config import ExperimentConfig, RUN_CONTROL_KEYS

    toml = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    defaults = ExperimentConfig().to_run_config()
    types = {f.name.replace("_", "-"): f.type for f in dataclasses.fields(ExperimentConfig)}
    flags = {key: "--" + dest.replace("_", "-") for dest, key in RUN_FLAGS.items()}
    choices = _key_choices()
    seen: set[str] = set()
    out = ["# Configuration", "",
           "Generated from `fl_defense.config.ExperimentConfig` (the defaults) and `[tool.flwr.app.config]` in "
           "`pyproject.toml` (the comment on each key's line) when the site is built.  Every knob of an experiment "
           "is one key; `python run_sim.py --set KEY=VALUE` reaches any key, the flags in the *flag* column reach "
           "theirs, and `flwr run . --run-config \"KEY=VALUE ...\"` takes them too.  The configuration is "
           "validated once, before anything starts (`fl_defense.config.parse_run_config`): an unknown key or "
           "name, a wrong type or an out-of-range value stops the run with exit code 2 and a message naming the "
           "key, the value and, for a typo, the nearest valid name.", ""]
    rows: list[list[str]] = []
    group = "The experiment"

    def flush():
        nonlocal rows
        if rows:
            out.extend([f"## {esc(group[0].upper() + group[1:])}", "",
                        table(["key", "default", "type", "flag of `run`", "accepts (from the code)",
                               "comment in pyproject.toml"], rows)])
        rows = []

    for kind, key, comment in _pyproject_config_lines():
        if kind == "group":
            flush()
            group = comment
            continue
        seen.add(key)
        default = defaults.get(key)
        note = esc(comment)
        if key not in defaults:
            note = "**not a key of `ExperimentConfig`**; " + note
        elif key in toml and toml[key] != default and str(toml[key]) != str(default):
            note = f"**pyproject.toml says {code(_toml_value(toml[key]))}**; " + note
        type_name = str(types.get(key, "")).replace("DefenseSpec", "str").replace("PartitionSpec", "str")
        rows.append([code(key), code(_toml_value(default)) if key in defaults else "-", code(type_name),
                     code(flags[key]) if key in flags else "", esc(choices.get(key, "")), note])
    flush()
    missing = [k for k in defaults if k not in seen]
    if missing:
        group = "Keys missing from pyproject.toml"
        rows = [[code(k), code(_toml_value(defaults[k])), code(str(types[k])), code(flags.get(k, "")), "", ""]
                for k in missing]
        flush()
    return "\n".join(out) + "\n"


# ============================================================================== registries


def _grid_text(d) -> str:
    return ", ".join(f"{v:g}" for v in d.grid) if d.grid else "-"


def defense_spec_text(d) -> str:
    """``masking:P[,rescale]`` / ``none``."""
    if d.value_name is None:
        return d.name
    flags = "".join(f"[,{f}]" for f in sorted(d.flags))
    return f"{d.name}:{d.value_name.upper()}{flags}"


def defenses_table(link: str = "") -> str:
    """The defense registry as a table; each name links to its section at ``link#name``."""
    from fl_defense.defenses import DEFENSES

    return table(["defense", "strength", "flags", "aware objective", "default grid (weakest first)", "by default",
                  "reference"],
                 [[f"[{code(defense_spec_text(d))}]({link}#{d.name})",
                   esc(d.value_range + ("; stronger when lower" if d.stronger == "lower" else "")),
                   ", ".join(code(f) for f in sorted(d.flags)) or "-", code(d.aware_objective), esc(_grid_text(d)),
                   "swept, trained" if d.default_experiment else "-", esc(d.reference or "-")]
                  for d in DEFENSES.entries()])


def models_table() -> str:
    from fl_defense.models import MODELS

    return table(["model", "what", "BatchNorm", "initialisation", "image sizes"],
                 [[code(m.name), esc(m.summary), "yes" if m.batchnorm else "no", esc(m.init),
                   esc(f"side >= {m.min_size}" + (f", a multiple of {m.size_multiple}" if m.size_multiple > 1 else ""))]
                  for m in MODELS.entries()])


def datasets_table() -> str:
    from fl_defense.datasets import DATASETS, FOLDER_PREFIX

    rows = [[code(d.name), esc(d.summary), esc(d.kind), "embedded (offline)" if d.embedded else "`--data-dir`",
             f"{d.image_size}x{d.image_size}",
             "official train/test" if d.official_split else esc(f"stratified, test fraction {d.test_fraction:g}"),
             "yes" if d.flips else "no"] for d in DATASETS.entries()]
    rows.append([code(f"{FOLDER_PREFIX}/ABS/DIR"), "a folder of labelled PNG/JPEG files (`cat_3.png` is class 3)",
                 "-", "the folder", "resized to 32x32", esc("stratified, seeded"), "no"])
    return table(["data set", "what", "kind", "where", "size", "split", "mirrored decoys"], rows)


def strategies_table() -> str:
    from fl_defense.strategy_catalogue import STRATEGIES

    return table(["strategy", "what", "keys", "builder", "under SecAgg+"],
                 [[code(s.name), esc(s.summary), ", ".join(code(k) for k in s.keys) or "-", code(s.builder),
                   esc(f"refused: {s.individual_uploads}") if s.individual_uploads else "allowed"]
                  for s in STRATEGIES.entries()])


def objectives_table() -> str:
    from attacks.objectives import OBJECTIVES

    return table(["objective", "loss", "relative to"],
                 [[code(o.name), esc(o.summary),
                   "1" if o.name == "cosine" else esc("the loss of a zero dummy gradient, ||o||^2")]
                  for o in OBJECTIVES.entries()])


def aware_objectives_table() -> str:
    from fl_defense.defenses import DEFENSES

    by: dict[str, list[str]] = {}
    for d in DEFENSES.entries():
        by.setdefault(d.aware_objective, []).append(d.name)
    return table(["aware objective", "against"], [[code(o), ", ".join(code(n) for n in names)]
                                                  for o, names in by.items()])


def registries_page() -> str:
    return "\n".join([
        "# Registries", "",
        "Every concept a user chooses by name has one registry (`fl_defense.registry.Registry`); help texts, "
        "config checks, the sweep and the grid read them.  These tables are generated from the registries when "
        "the site is built (plug-ins installed in the building environment included); `python run_sim.py "
        "defenses`, `models`, `datasets` and `strategies` print the same from the command line.", "",
        "## Defenses", "", "`fl_defense.defenses.DEFENSES` (entry-point group `fl_defense.defenses`); "
        "see [Defenses](../defenses.md).", "", defenses_table("../defenses.md"),
        "## Models", "", "`fl_defense.models.MODELS` (entry-point group `fl_defense.models`).", "", models_table(),
        "## Data sets", "", "`fl_defense.datasets.DATASETS`.", "", datasets_table(),
        "## Strategies", "", "`fl_defense.strategy_catalogue.STRATEGIES` (entry-point group "
        "`fl_defense.strategies`).", "", strategies_table(),
        "## Attack objectives", "", "`attacks.objectives.OBJECTIVES`: what an attacker matches; a defense's "
        "entry names the objective of the attacker who knows it.", "", objectives_table()]) + "\n"


# ============================================================================== the defenses page


def _split_terms(doc: str, names: list[str]) -> tuple[str, dict[str, str], str]:
    """A defense module's docstring cut into its summary line, the definition-list items whose
    term names one of ``names`` (``masking:p``, ``masking-bn:p``), and the rest."""
    lines = inspect.cleandoc(doc).split("\n")
    summary = lines[0]
    rest = lines[1:]
    items: dict[str, list[str]] = {}
    shared: list[str] = []
    current = None
    for line in rest:
        term = line.strip().strip("`").split(":")[0] if line and not line.startswith(" ") else None
        if term in names and line.strip().startswith("``"):
            current = term
            items[current] = []
            continue
        if current is not None and (line.startswith("    ") or not line.strip()):
            items[current].append(line[4:] if line.startswith("    ") else "")
            continue
        current = None
        shared.append(line)
    return summary, {k: "\n".join(v).strip() for k, v in items.items()}, "\n".join(shared).strip()


def defense_sections() -> str:
    """One section per registered defense: its facts from the registry and its module's docstring."""
    from fl_defense.defenses import DEFENSES

    by_module: dict[str, list] = {}
    for d in DEFENSES.entries():
        by_module.setdefault(d.func.__module__, []).append(d)
    out = []
    for d in DEFENSES.entries():
        mod = importlib.import_module(d.func.__module__)
        summary, items, shared = _split_terms(mod.__doc__ or "", [x.name for x in by_module[d.func.__module__]])
        facts = [("written", code(defense_spec_text(d)) + (f", e.g. {code(d.example)}" if d.example else "")),
                 ("what it does", esc(d.summary)),
                 ("strength", esc(d.value_range) + (" (stronger when lower)" if d.stronger == "lower" else "")
                  if d.value_name else "none"),
                 ("flags", ", ".join(code(f) for f in sorted(d.flags)) or "-"),
                 ("aware attacker's objective", code(d.aware_objective)),
                 ("default sweep grid", esc(_grid_text(d)) + (f" ({d.axis} axis)" if d.grid else "")),
                 ("swept and trained by default", "yes" if d.default_experiment else "no")]
        if d.batchnorm_variant:
            facts.append(("with a BatchNorm model", f"trained as {code(d.batchnorm_variant)}"))
        if d.needs_clip:
            facts.append(("also takes", "C, the L2 bound of the update (config key `dp-clip`)"))
        if d.needs_context:
            facts.append(("also takes", "the client's model and images (a `DefenseContext`)"))
        facts += [("module", code(d.func.__module__)), ("reference", esc(d.reference or "-"))]
        out += [f"### `{d.name}` {{ #{d.name} }}", "", docstring_markdown(summary).strip(), "",
                table(["property", "value"], facts)]
        if d.name in items:
            out += [docstring_markdown(items[d.name], heading_level=4), ""]
        if shared:
            out += [docstring_markdown(shared, heading_level=4), ""]
    return "\n".join(out)
