"""``run_sim.py defenses | models | datasets | strategies``: what each registry holds, read
off the registries themselves (plug-ins included)."""

from __future__ import annotations

import textwrap


def _fmt_grid(values) -> str:
    return ", ".join(f"{v:g}" for v in values) if values else "-"


def _block(rows: list[tuple[str, str]], width: int = 100) -> str:
    key = max(len(k) for k, _ in rows)
    out = []
    for k, v in rows:
        wrapped = textwrap.wrap(v, width - key - 4) or [""]
        out.append(f"  {k.ljust(key)}  {wrapped[0]}")
        out += [f"  {' ' * key}  {line}" for line in wrapped[1:]]
    return "\n".join(out)


def defenses_text() -> str:
    from fl_defense.defenses import DEFENSES

    parts = []
    for d in DEFENSES.entries():
        if d.value_name is None:
            continue
        rows = [("what", d.summary), ("strength", d.value_range + (f" (stronger when {d.stronger})"
                                                                    if d.stronger == "lower" else "")),
                ("flags", ", ".join(sorted(d.flags)) or "-"), ("aware attacker", f"objective {d.aware_objective}"),
                ("sweep grid", _fmt_grid(d.grid) + ("  (swept and trained by default)" if d.default_experiment
                                                    else ""))]
        if d.needs_clip:
            rows.append(("needs", "C, the config key dp-clip"))
        if d.needs_context:
            rows.append(("needs", "the client's model and images (computed in the client)"))
        if d.batchnorm_variant:
            rows.append(("with BatchNorm", f"trained as {d.batchnorm_variant}"))
        if d.reference:
            rows.append(("from", d.reference))
        parts.append(f"{d.name}:{d.value_name.upper()}   e.g. {d.example}\n" + _block(rows))
    names = [d.name for d in DEFENSES.entries() if d.value_name is not None]
    return (f"{len(names)} defenses (and 'none'); write NAME:VALUE[,FLAG], e.g. --defense masking:0.4\n\n"
            + "\n\n".join(parts))


def models_text() -> str:
    from fl_defense.models import MODELS

    parts = []
    for m in MODELS.entries():
        sizes = f"image side >= {m.min_size}" + (f", a multiple of {m.size_multiple}" if m.size_multiple > 1 else "")
        parts.append(f"{m.name}\n" + _block([("what", m.summary), ("BatchNorm", "yes" if m.batchnorm else "no"),
                                             ("init", m.init), ("sizes", sizes)]))
    return f"{len(parts)} models (--model NAME)\n\n" + "\n\n".join(parts)


def datasets_text() -> str:
    from fl_defense.datasets import DATASETS, FOLDER_PREFIX

    parts = []
    for d in DATASETS.entries():
        where = "embedded (offline)" if d.embedded else "read from --data-dir"
        split = "official train/test" if d.official_split else f"stratified, test fraction {d.test_fraction:g}"
        parts.append(f"{d.name}\n" + _block([("what", d.summary), ("kind", d.kind), ("where", where),
                                             ("size", f"{d.image_size}x{d.image_size}"), ("split", split)]))
    return (f"{len(parts)} data sets (--dataset NAME), and {FOLDER_PREFIX}/ABS/DIR for a folder of labelled "
            f"images\n\n" + "\n\n".join(parts))


def strategies_text() -> str:
    from fl_defense.strategy_catalogue import STRATEGIES

    parts = []
    for s in STRATEGIES.entries():
        rows = [("what", s.summary), ("keys", ", ".join(s.keys) or "-")]
        if s.individual_uploads:
            rows.append(("SecAgg+", f"refused: {s.individual_uploads}"))
        parts.append(f"{s.name}\n" + _block(rows))
    return f"{len(parts)} strategies (--strategy NAME)\n\n" + "\n\n".join(parts)


LISTINGS = {"defenses": defenses_text, "models": models_text, "datasets": datasets_text,
            "strategies": strategies_text}


def register(sub) -> None:
    for name, fn in LISTINGS.items():
        p = sub.add_parser(name, help=f"list the registered {name}, with what they take")
        p.set_defaults(func=lambda args, fn=fn: print(fn()) or 0)
