"""The registries: derived lists, look-ups, plug-ins through entry points; the two defenses
added through the registry (quantisation, soteria)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from attacks.objectives import OBJECTIVES
from fl_defense.datasets import DATASETS
from fl_defense.defenses import DEFENSES, Defense, DefenseContext, apply_defense, defense_rng, parse_defense
from fl_defense.defenses.quantisation import levels
from fl_defense.defenses.soteria import feature_scores
from fl_defense.models import MODELS, build_model, state_kinds
from fl_defense.registry import Registry, RegistryError
from fl_defense.strategy_catalogue import STRATEGIES


def test_every_defense_names_a_registered_aware_objective_and_a_valid_grid():
    for d in DEFENSES.entries():
        assert d.aware_objective in OBJECTIVES, d.name
        for v in d.grid:
            assert parse_defense(f"{d.name}:{v:g}", clip=1.0).value == v
        if d.batchnorm_variant:
            assert d.batchnorm_variant in DEFENSES
    assert [d.name for d in DEFENSES.entries() if d.default_experiment] == ["masking", "clipping", "pruning",
                                                                              "noising"]
    assert len([d for d in DEFENSES.entries() if d.value_name is not None]) == 9


def test_every_strategy_builder_resolves():
    from strategies.factory import resolve_builder

    for s in STRATEGIES.entries():
        assert callable(resolve_builder(s.builder)), s.name


def test_lookups_suggest_the_nearest_name():
    with pytest.raises(RegistryError, match=r"unknown model 'tanhcn' \(did you mean 'tanhcnn'\?\)"):
        build_model("tanhcn", 1, 28, 10)
    with pytest.raises(ValueError, match="did you mean 'mnist-embedded'"):
        from fl_defense.datasets import load_dataset
        load_dataset("mnist-embeded")
    with pytest.raises(ValueError, match="multiple of 4"):
        build_model("bncnn", 1, 30, 10)
    assert "colour-embedded" in DATASETS and "FedAvg" in STRATEGIES and "FedAvgg" not in STRATEGIES


def test_registry_refuses_duplicates_and_wrong_types():
    reg = Registry("thing", Defense, (DEFENSES["none"],))
    with pytest.raises(RegistryError, match="already registered"):
        Registry("thing", Defense, (DEFENSES["none"], DEFENSES["none"]))
    with pytest.raises(RegistryError, match="must be a Defense"):
        Registry("thing", Defense, ("none",))
    assert reg.names() == ("none",)


def _fake_distribution(root, group: str, target: str, module_source: str) -> None:
    """An installed distribution as importlib.metadata sees one: a module and a dist-info
    folder with its entry points, on a folder of sys.path."""
    (root / "fake_plugin.py").write_text(textwrap.dedent(module_source))
    info = root / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nthing = {target}\n")


def test_plugins_are_loaded_from_entry_points_and_broken_ones_are_named(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "fl_defense.test_things", "fake_plugin:ENTRY", """
        from fl_defense.defenses import Defense
        ENTRY = Defense("sign", lambda arrays, kinds, value, flags, rng: [a.copy() for a in arrays],
                        "keep the signs", None)
        BROKEN = 3
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fake_plugin", None)
    reg = Registry("defense", Defense, (DEFENSES["none"],), entry_point_group="fl_defense.test_things")
    assert reg.names() == ("none", "sign") and reg.get("sign").summary == "keep the signs"
    (tmp_path / "fake_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[fl_defense.test_broken]\nthing = fake_plugin:BROKEN\n")
    broken = Registry("defense", Defense, (), entry_point_group="fl_defense.test_broken")
    with pytest.raises(RegistryError, match=r"plug-in entry point 'thing' = 'fake_plugin:BROKEN'.*must be a Defense"):
        broken.names()


# ------------------------------------------------------------------------------ quantisation


def _payload(seed=0, n=50):
    g = np.random.default_rng(seed)
    return [g.normal(size=(n,)).astype(np.float64), g.normal(size=(4, 5)).astype(np.float32),
            g.uniform(0.5, 2, size=(3,)).astype(np.float32)], ["weight", "weight", "bn_stat"]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantisation_is_unbiased_on_its_levels_and_spares_statistics(bits):
    payload, kinds = _payload()
    s = levels(bits)
    draws = [apply_defense(f"quantisation:{bits}", payload, kinds, defense_rng(0, c, 0)) for c in range(2000)]
    for i in (0, 1):
        v = payload[i].astype(np.float64)
        norm = np.linalg.norm(v)
        stack = np.stack([d[i].astype(np.float64) for d in draws])
        lv = np.abs(stack) / norm * s
        assert np.allclose(lv, np.round(lv), atol=1e-4) and lv.max() <= s + 1e-4   # on the level grid
        assert np.all((np.sign(stack) == np.sign(v)) | (stack == 0))
        se = stack.std(0) / np.sqrt(len(draws)) + 1e-12
        assert np.all(np.abs(stack.mean(0) - v) < 5 * se + 1e-6)                   # unbiased
        assert draws[0][i].dtype == payload[i].dtype
    assert all(np.array_equal(d[2], payload[2]) for d in draws[:5])
    zero = apply_defense(f"quantisation:{bits}", [np.zeros(5)], ["weight"], defense_rng(0, 0, 0))
    assert np.array_equal(zero[0], np.zeros(5))


def test_quantisation_takes_whole_bits_only():
    assert str(parse_defense("quantisation:4")) == "quantisation:4"
    for bad in ("quantisation:4.5", "quantisation:1", "quantisation:17"):
        with pytest.raises(ValueError, match="whole number b in"):
            parse_defense(bad)


# ------------------------------------------------------------------------------ soteria


def _soteria_context(images=4):
    torch.manual_seed(0)
    model = build_model("tanhcnn", 1, 28, 10)
    x = np.random.default_rng(1).uniform(size=(images, 1, 28, 28)).astype(np.float32)
    ctx = DefenseContext(model, tuple(model.state_dict()), x, np.arange(images) % 10)
    payload = [np.random.default_rng(2).normal(size=tuple(v.shape)).astype(np.float32)
               for v in model.state_dict().values()]
    return model, ctx, payload


def test_soteria_zeroes_the_lowest_scored_columns_of_the_last_linear_update():
    model, ctx, payload = _soteria_context()
    kinds = state_kinds(model)
    out = apply_defense("soteria:0.3", payload, kinds, defense_rng(0, 0, 0), ctx)
    i = list(ctx.state_keys).index("fc.weight")
    scores = feature_scores(model, ctx.images)
    pruned = scores < np.percentile(scores, 30)
    assert abs(pruned.mean() - 0.3) < 0.01
    assert np.all(out[i][:, pruned] == 0) and np.array_equal(out[i][:, ~pruned], payload[i][:, ~pruned])
    assert all(np.array_equal(o, p) for j, (o, p) in enumerate(zip(out, payload)) if j != i)
    assert all(np.array_equal(o, p) for o, p in zip(apply_defense("soteria:0", payload, kinds,
                                                                  defense_rng(0, 0, 0), ctx), payload))
    with pytest.raises(ValueError, match="needs the client's model and images"):
        apply_defense("soteria:0.3", payload, kinds, defense_rng(0, 0, 0))


def test_soteria_scores_match_a_finite_difference_jacobian():
    """score_f = sum_n ||d r_nf / d x_n|| / (|r_nf| + 0.1), checked on two features by
    central differences of the representation."""
    model, ctx, _ = _soteria_context(images=2)
    scores = feature_scores(model, ctx.images)
    x = torch.as_tensor(ctx.images, dtype=torch.float64)
    m64 = model.double().eval()
    rep = lambda z: m64.body(z).flatten(1)  # noqa: E731 (tanhcnn: fc's input is body(x) flattened)
    eps = 1e-5
    base = rep(x)
    for f in (0, 777):
        total = 0.0
        for n in range(2):
            grad = torch.zeros(x[n].numel(), dtype=torch.float64)
            for k in range(x[n].numel()):
                e = torch.zeros_like(x)
                e[n].view(-1)[k] = eps
                grad[k] = (rep(x + e)[n, f] - rep(x - e)[n, f]) / (2 * eps)
            total += float(grad.norm() / (base[n, f].abs() + 0.1))
        assert abs(total - scores[f]) < 1e-3 * max(1.0, abs(total))
