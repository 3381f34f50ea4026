"""Tests of fl_defense.defenses: definitions, statistics, determinism, validation."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fl_defense.defenses import (
    DEFENSES,
    DefenseSpec,
    apply_defense,
    defense_rng,
    get_defense,
    parse_defense,
)

FAST = settings(max_examples=40, deadline=None)

ALL_SPECS = [
    "none", "masking:0.4", "masking:0.4,rescale", "masking-bn:0.4", "masking-bn:0.4,rescale",
    "clipping:0.5", "clipping:0.5,per-layer", "pruning:0.6", "pruning:0.6,global",
    "noising:0.1", "noising-laplace:0.1",
]
RANDOM_SPECS = ["masking:0.4", "masking-bn:0.4", "noising:0.1", "noising-laplace:0.1"]


def synthetic_payload(seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Weights, a BatchNorm layer (gamma, beta, running stats, counter) and a linear layer."""
    g = np.random.default_rng(seed)
    payload = [
        g.normal(size=(8, 3, 3, 3)).astype(np.float32),   # conv weight (delta)
        g.normal(size=8).astype(np.float32),              # conv bias (delta)
        g.normal(size=8).astype(np.float32),              # bn gamma (delta)
        g.normal(size=8).astype(np.float32),              # bn beta (delta)
        g.normal(size=8).astype(np.float32),              # running_mean (value)
        g.uniform(0.5, 2.0, size=8).astype(np.float32),   # running_var (value)
        np.array(17, dtype=np.int64),                     # num_batches_tracked
        g.normal(size=(10, 32)).astype(np.float64),       # linear weight (delta)
    ]
    kinds = ["weight", "weight", "bn_affine", "bn_affine", "bn_stat", "bn_stat", "bn_stat",
             "weight"]
    return payload, kinds


def nonzero_array(n: int, seed: int, dtype=np.float64) -> np.ndarray:
    g = np.random.default_rng(seed)
    return (g.uniform(0.5, 1.5, size=n) * g.choice([-1.0, 1.0], size=n)).astype(dtype)


# ------------------------------------------------------------------------------ parsing


@FAST
@given(name=st.sampled_from(sorted(DEFENSES)), data=st.data())
def test_parse_str_roundtrip(name, data):
    info = DEFENSES[name]
    if info.value_name is None:
        spec = parse_defense(name)
        assert spec == DefenseSpec("none") and spec.value is None and str(spec) == "none"
        return
    high = info.high if math.isfinite(info.high) else 1e6
    if info.integer:
        value = float(data.draw(st.integers(math.ceil(info.low), math.floor(info.high))))
    else:
        value = data.draw(st.floats(info.low, high, exclude_min=not info.low_inclusive,
                                    exclude_max=not info.high_inclusive, allow_nan=False))
    flags = data.draw(st.frozensets(st.sampled_from(sorted(info.flags))) if info.flags
                      else st.just(frozenset()))
    clip = data.draw(st.floats(1e-6, 1e6)) if info.needs_clip else None
    spec = DefenseSpec(name, value, flags, clip)
    assert parse_defense(str(spec), clip=clip) == spec
    assert parse_defense(" " + str(spec).upper() + " ", clip=clip) == spec
    assert spec.value == value and spec.flags == flags and spec.clip == clip


def test_parse_examples():
    assert parse_defense("masking:0.4,rescale") == DefenseSpec("masking", 0.4,
                                                               frozenset({"rescale"}))
    assert parse_defense("clipping:1.0,per-layer").flags == frozenset({"per-layer"})
    assert parse_defense("pruning:0.9,global").value == 0.9
    assert parse_defense("noising-laplace:0.01").name == "noising-laplace"
    assert get_defense("Masking") is DEFENSES["masking"]


@pytest.mark.parametrize("text, fragment", [
    ("masking:1", "1.0"), ("masking:1.5", "1.5"), ("masking:-0.1", "-0.1"),
    ("pruning:1", "1.0"), ("masking-bn:2", "2.0"),
    ("clipping:0", "0.0"), ("clipping:-1", "-1.0"), ("clipping:inf", "inf"),
    ("noising:-0.5", "-0.5"), ("noising-laplace:-1e-3", "-0.001"),
    ("masking:nan", "nan"), ("noising:NaN", "nan"), ("clipping:nan", "nan"),
    ("maskng:0.4", "maskng"), ("foo", "foo"), ("masking:0.4,rescal", "rescal"),
    ("clipping:1,global", "global"), ("noising:0.1,rescale", "rescale"),
    ("masking", "masking"), ("masking:", "masking:"), ("clipping:abc", "abc"),
    ("none:0", "none:0"), ("masking:0.4,", "masking:0.4,"), ("", "''"),
])
def test_parse_errors_name_the_value(text, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_defense(text)


def test_unknown_names_suggest_the_nearest():
    with pytest.raises(ValueError, match=r"did you mean 'masking'\?"):
        parse_defense("maskng:0.4")
    with pytest.raises(ValueError, match=r"did you mean 'noising-laplace'\?"):
        parse_defense("noising-laplac:0.1")
    with pytest.raises(ValueError, match=r"did you mean 'per-layer'\?"):
        parse_defense("clipping:1,perlayer")
    with pytest.raises(ValueError, match="needs a value"):
        parse_defense("clipping")


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(name="masking", value=True), "True"),
    (dict(name="masking", value="0.4"), "'0.4'"),
    (dict(name="none", value=0.1), "0.1"),
    (dict(name="masking", value=0.4, flags="rescale"), "'rescale'"),
    (dict(name="masking", value=0.4, flags={1}), "1"),
    (dict(name=3, value=0.4), "3"),
])
def test_spec_construction_validates(kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        DefenseSpec(**kwargs)


# ----------------------------------------------------------------------------- masking


@FAST
@given(p=st.floats(0.0, 0.95), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from([np.float32, np.float64]), rescale=st.booleans())
def test_masking_fraction_and_survivors(p, seed, dtype, rescale):
    n = 4000
    x = nonzero_array(n, seed, dtype)
    text = f"masking:{p!r}" + (",rescale" if rescale else "")
    (out,) = apply_defense(parse_defense(text), [x], ["weight"], np.random.default_rng(seed))
    assert out.dtype == x.dtype and out.shape == x.shape
    zeroed = out == 0
    bound = 5 * math.sqrt(n * p * (1 - p)) + 1
    assert abs(int(zeroed.sum()) - n * p) <= bound
    kept = ~zeroed
    if rescale:
        expected = (x.astype(np.float64) * (1.0 / (1.0 - p))).astype(dtype)
        np.testing.assert_array_equal(out[kept], expected[kept])
        np.testing.assert_allclose(out[kept], x[kept] / (1.0 - p), rtol=1e-6)
    else:
        np.testing.assert_array_equal(out[kept], x[kept])


def test_masking_zero_probability_is_identity():
    payload, kinds = synthetic_payload()
    out = apply_defense(parse_defense("masking:0"), payload, kinds, defense_rng(0, 0, 0))
    for a, b in zip(payload, out):
        np.testing.assert_array_equal(a, b)


def test_masking_bn_spares_running_stats_and_shares_update_masks():
    payload, kinds = synthetic_payload(3)
    plain = apply_defense(parse_defense("masking:0.5"), payload, kinds, defense_rng(1, 2, 3))
    bn = apply_defense(parse_defense("masking-bn:0.5"), payload, kinds, defense_rng(1, 2, 3))
    for a, p_out, b_out, k in zip(payload, plain, bn, kinds):
        if k == "bn_stat":
            np.testing.assert_array_equal(b_out, a)
        else:  # same generator state: the same update coordinates are zeroed
            np.testing.assert_array_equal(b_out, p_out)
            assert (p_out == 0).any()
    running_var = plain[5]
    assert (running_var == 0).any() and (running_var != 0).any()
    assert plain[6] == payload[6] and plain[6].dtype == np.int64


def test_masking_on_a_bncnn_state_dict():
    torch = pytest.importorskip("torch")
    from fl_defense.models import BNCNN, state_kinds

    torch.manual_seed(0)
    model = BNCNN(1, 28, 10)
    kinds = state_kinds(model)
    payload = [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]
    names = list(model.state_dict())
    plain = apply_defense(parse_defense("masking:0.4"), payload, kinds, defense_rng(0, 1, 1))
    bn = apply_defense(parse_defense("masking-bn:0.4"), payload, kinds, defense_rng(0, 1, 1))
    var_idx = [i for i, n in enumerate(names) if n.endswith("running_var")]
    assert len(var_idx) == 2
    assert any((plain[i] == 0).any() for i in var_idx)  # naive masking breaks the statistics
    for i, k in enumerate(kinds):
        if k == "bn_stat":
            np.testing.assert_array_equal(bn[i], payload[i])
    count = [i for i, n in enumerate(names) if n.endswith("num_batches_tracked")]
    for i in count:
        assert plain[i].dtype == np.int64 and plain[i] == payload[i]


# ---------------------------------------------------------------------------- clipping

update_arrays = st.lists(
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=6),
               elements=st.floats(-100, 100, allow_nan=False)),
    min_size=1, max_size=4)


def bound_for(arrays, ratio):
    """A clipping bound `ratio` times the input norm (1.0 for a zero input)."""
    norm = math.sqrt(sum(float(np.sum(a * a)) for a in arrays))
    return ratio * norm if norm > 0 else 1.0


@FAST
@given(arrays=update_arrays, ratio=st.floats(0.01, 2.0))
@example(arrays=[np.array([3.0, 4.0])], ratio=0.999999)
@example(arrays=[np.array([3.0, 4.0])], ratio=1.0)
@example(arrays=[np.array([4.54196432e-162])], ratio=0.25)  # tiny norms: their product underflows
def test_clipping_global_bounds_norm_and_keeps_direction(arrays, ratio):
    c = bound_for(arrays, ratio)
    kinds = ["weight"] * (len(arrays) - 1) + ["bn_affine"]
    out = apply_defense(DefenseSpec("clipping", c), arrays, kinds, np.random.default_rng(0))
    norm_in = math.sqrt(sum(float(np.sum(a * a)) for a in arrays))
    norm_out = math.sqrt(sum(float(np.sum(a * a)) for a in out))
    assert norm_out <= c * (1 + 1e-9)
    if norm_in <= c:
        for a, b in zip(arrays, out):
            np.testing.assert_array_equal(a, b)
    else:
        assert norm_out == pytest.approx(c, rel=1e-9)
        scale = c / norm_in
        for a, b in zip(arrays, out):  # one positive scale for all arrays: direction unchanged
            np.testing.assert_allclose(b, a * scale, rtol=1e-12, atol=0)
        x = np.concatenate([a.ravel() for a in arrays])
        y = np.concatenate([b.ravel() for b in out])
        # cosine, each vector first scaled by its largest entry (squares of tiny entries underflow)
        x, y = x / np.abs(x).max(), y / np.abs(y).max()
        assert float(x @ y) / (np.linalg.norm(x) * np.linalg.norm(y)) == pytest.approx(1.0)


@FAST
@given(arrays=update_arrays, ratio=st.floats(0.01, 2.0))
@example(arrays=[np.array([3.0, 4.0]), np.array([[0.1]])], ratio=0.99)
def test_clipping_per_layer_bounds_each_array(arrays, ratio):
    c = bound_for(arrays[:1], ratio)
    out = apply_defense(DefenseSpec("clipping", c, frozenset({"per-layer"})), arrays,
                        ["weight"] * len(arrays), np.random.default_rng(0))
    for a, b in zip(arrays, out):
        norm = float(np.linalg.norm(a))
        assert float(np.linalg.norm(b)) <= c * (1 + 1e-9)
        if norm <= c:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(b, a * (c / norm), rtol=1e-12, atol=0)


def test_clipping_float32_and_running_stats():
    payload, kinds = synthetic_payload(5)
    out = apply_defense(parse_defense("clipping:0.1"), payload, kinds, defense_rng(0, 0, 0))
    update = [b for b, k in zip(out, kinds) if k != "bn_stat"]
    norm = math.sqrt(sum(float(np.sum(b.astype(np.float64) ** 2)) for b in update))
    assert norm == pytest.approx(0.1, rel=1e-6)
    for a, b, k in zip(payload, out, kinds):
        assert b.dtype == a.dtype
        if k == "bn_stat":
            np.testing.assert_array_equal(a, b)


def test_clipping_rejects_non_finite_updates():
    with pytest.raises(ValueError, match="entry 1"):
        apply_defense(parse_defense("clipping:1"), [np.ones(3), np.array([1.0, np.inf])],
                      ["weight", "weight"], np.random.default_rng(0))


# ----------------------------------------------------------------------------- pruning


def reference_prune(flat: np.ndarray, p: float) -> np.ndarray:
    """Indices zeroed: the floor(p*n) smallest |x|, ties by index (p read as decimal)."""
    k = math.floor(Fraction(repr(p)) * flat.size)
    order = sorted(range(flat.size), key=lambda i: (abs(float(flat[i])), i))
    return np.array(sorted(order[:k]), dtype=np.int64)


tied_arrays = st.lists(
    hnp.arrays(st.sampled_from([np.float32, np.float64]),
               hnp.array_shapes(min_dims=1, max_dims=3, max_side=5),
               elements=st.integers(-4, 4).map(float)),
    min_size=1, max_size=4)


@FAST
@given(arrays=tied_arrays, p=st.floats(0.0, 0.99))
def test_pruning_per_tensor_keeps_the_largest(arrays, p):
    out = apply_defense(DefenseSpec("pruning", p), arrays, ["weight"] * len(arrays),
                        np.random.default_rng(0))
    for a, b in zip(arrays, out):
        assert b.dtype == a.dtype and b.shape == a.shape
        zeroed = reference_prune(a.ravel(), p)
        expected = a.ravel().copy()
        expected[zeroed] = 0
        np.testing.assert_array_equal(b.ravel(), expected)


@FAST
@given(arrays=tied_arrays, p=st.floats(0.0, 0.99))
def test_pruning_global_ranks_all_entries_together(arrays, p):
    kinds = ["bn_affine"] + ["weight"] * (len(arrays) - 1)
    out = apply_defense(DefenseSpec("pruning", p, frozenset({"global"})), arrays, kinds,
                        np.random.default_rng(0))
    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    expected = flat.copy()
    expected[reference_prune(flat, p)] = 0
    np.testing.assert_array_equal(np.concatenate([b.ravel() for b in out]), expected)


def test_pruning_count_ties_and_running_stats():
    x = np.arange(1, 101, dtype=np.float32)
    (out,) = apply_defense(parse_defense("pruning:0.29"), [x], ["weight"], defense_rng(0, 0, 0))
    assert int((out == 0).sum()) == 29 and (out[29:] == x[29:]).all()
    tied = np.array([[2.0, -1.0, 1.0], [1.0, -1.0, 3.0]])
    (out,) = apply_defense(parse_defense("pruning:0.5"), [tied], ["weight"],
                           defense_rng(0, 0, 0))
    np.testing.assert_array_equal(out, [[2.0, 0.0, 0.0], [0.0, -1.0, 3.0]])
    payload, kinds = synthetic_payload(2)
    out = apply_defense(parse_defense("pruning:0.9,global"), payload, kinds,
                        defense_rng(0, 0, 0))
    for a, b, k in zip(payload, out, kinds):
        if k == "bn_stat":
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- noising


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0])
def test_gaussian_noise_statistics(scale):
    n = 200_000
    x = nonzero_array(n, 1)
    (out,) = apply_defense(DefenseSpec("noising", scale), [x], ["weight"],
                           defense_rng(7, 1, 2))
    noise = out - x
    assert abs(noise.mean()) <= 5 * scale / math.sqrt(n)
    assert abs(noise.std() / scale - 1) <= 5 / math.sqrt(2 * n)  # sd(s)/sigma ~ 1/sqrt(2n)
    # Gaussian: E|X| = sigma * sqrt(2/pi)
    assert abs(np.abs(noise).mean() / (scale * math.sqrt(2 / math.pi)) - 1) <= 5 / math.sqrt(n)


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0])
def test_laplace_noise_statistics(scale):
    n = 200_000
    x = nonzero_array(n, 2)
    (out,) = apply_defense(DefenseSpec("noising-laplace", scale), [x], ["bn_affine"],
                           defense_rng(7, 1, 2))
    noise = out - x
    std = scale * math.sqrt(2)
    assert abs(noise.mean()) <= 5 * std / math.sqrt(n)
    # kurtosis 6: sd(s^2)/sigma^2 = sqrt(5/n), so sd(s)/sigma ~ sqrt(5/(4n))
    assert abs(noise.std() / std - 1) <= 5 * math.sqrt(5 / (4 * n))
    # Laplace: E|X| = b, Var|X| = b^2 (a Gaussian of equal std would give 1.128 b)
    assert abs(np.abs(noise).mean() / scale - 1) <= 5 / math.sqrt(n)


@pytest.mark.parametrize("text", ["noising:0", "noising-laplace:0"])
def test_zero_noise_is_identity_and_running_stats_are_spared(text):
    payload, kinds = synthetic_payload(4)
    out = apply_defense(parse_defense(text), payload, kinds, defense_rng(0, 0, 0))
    for a, b in zip(payload, out):
        np.testing.assert_array_equal(a, b)
    noisy = apply_defense(parse_defense(text.replace(":0", ":1")), payload, kinds,
                          defense_rng(0, 0, 0))
    for a, b, k in zip(payload, noisy, kinds):
        assert b.dtype == a.dtype
        if k == "bn_stat":
            np.testing.assert_array_equal(a, b)
        else:
            assert (a != b).all()


# ----------------------------------------------- determinism, purity, kinds, validation


@pytest.mark.parametrize("text", ALL_SPECS)
def test_pure_deterministic_and_kind_preserving(text):
    spec = parse_defense(text)
    payload, kinds = synthetic_payload(6)
    before = [a.copy() for a in payload]
    out1 = apply_defense(spec, payload, kinds, defense_rng(11, 3, 4))
    out2 = apply_defense(spec, payload, kinds, defense_rng(11, 3, 4))
    for a, a0, b1, b2, k in zip(payload, before, out1, out2, kinds):
        np.testing.assert_array_equal(a, a0)  # input never modified
        assert a.dtype == a0.dtype
        np.testing.assert_array_equal(b1, b2)  # same seed, same output
        assert b1.dtype == a.dtype and b1.shape == a.shape
        assert not np.shares_memory(a, b1)
        if not np.issubdtype(a.dtype, np.floating):  # integer buffers never touched
            np.testing.assert_array_equal(a, b1)
        if k == "bn_stat" and spec.name != "masking":
            np.testing.assert_array_equal(a, b1)


@pytest.mark.parametrize("text", RANDOM_SPECS)
def test_fresh_randomness_per_client_and_round(text):
    spec = parse_defense(text)
    payload, kinds = synthetic_payload(8)
    base = apply_defense(spec, payload, kinds, defense_rng(0, 1, 1))
    for triple in [(0, 2, 1), (0, 1, 2), (1, 1, 1)]:
        other = apply_defense(spec, payload, kinds, defense_rng(*triple))
        assert any(not np.array_equal(a, b) for a, b in zip(base, other)), triple


def test_defense_rng_validation_and_streams():
    assert defense_rng(1, 2, 3).random() == defense_rng(1, 2, 3).random()
    assert defense_rng(1, 2, 3).random() != defense_rng(1, 3, 2).random()
    assert defense_rng(0, 2**63, 0).random() != defense_rng(0, 0, 0).random()
    for args, fragment in [((-1, 0, 0), "seed"), ((0, -5, 0), "-5"), ((0, 0, 1.5), "1.5"),
                           ((True, 0, 0), "True")]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            defense_rng(*args)


def test_apply_defense_validates_inputs():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="2 arrays but kinds has 1"):
        apply_defense("none", [np.ones(2), np.ones(2)], ["weight"], rng)
    with pytest.raises(ValueError, match="'gradient'"):
        apply_defense("none", [np.ones(2)], ["gradient"], rng)
    with pytest.raises(ValueError, match="rng must be"):
        apply_defense("none", [np.ones(2)], ["weight"], 0)
    with pytest.raises(ValueError, match="spec must be a DefenseSpec"):
        apply_defense(0.5, [np.ones(2)], ["weight"], rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'pruning:1'"):
        apply_defense("pruning:1", [np.ones(2)], ["weight"], rng)
    assert apply_defense("pruning:0.5", [], [], rng) == []
