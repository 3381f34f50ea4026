"""The scorer: one-to-one matching, the two leak criteria, decoy pools, records, rescoring,
and the batched SSIM it relies on (against scikit-image)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from fl_defense import metrics
from fl_defense.decoys import DecoyPool, pool_for_dataset
from fl_defense.scoring import load_record, match, rescore, save_record, score
from fl_defense.stats import leak_interval95, leak_upper95


def _images(n, seed=0, size=12, c=1):
    rng = np.random.default_rng(seed)
    return np.clip(rng.random((n, c, size, size)), 0, 1).astype(np.float32)


def _pool(images, labels=None, match_labels=False):
    labels = np.full(len(images), -1) if labels is None else np.asarray(labels)
    return DecoyPool(metrics.ImageSet.of(images), labels.astype(np.int64), f"{len(images)} test images", {},
                     match_labels)


# ------------------------------------------------------------------ batched SSIM


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.sampled_from([1, 3]), size=st.integers(7, 33),
       noise=st.floats(0.0, 0.6))
def test_batched_ssim_equals_scikit_image(seed, c, size, noise):
    rng = np.random.default_rng(seed)
    truth = rng.random((c, size, size))
    recon = np.clip(truth + rng.normal(0, noise, truth.shape), 0, 1)
    ref = (structural_similarity(truth[0], recon[0], data_range=1.0) if c == 1 else
           structural_similarity(truth, recon, data_range=1.0, channel_axis=0))
    assert abs(metrics.ssim(truth, recon) - ref) < 1e-6
    many = metrics.ssim_many(np.stack([truth, recon, truth * 0.5]), recon)
    assert abs(many[0] - ref) < 1e-6 and abs(many[1] - 1.0) < 1e-9


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), c=st.sampled_from([1, 3]), gain=st.floats(-3, 3), offset=st.floats(-1, 1))
def test_batched_adjusted_ssim_equals_the_pairwise_one(seed, c, gain, offset):
    """One reconstruction against a pool in one call equals the pairwise adjusted SSIM, for
    adjustments that clip and ones that do not."""
    rng = np.random.default_rng(seed)
    pool = rng.random((6, c, 14, 14))
    pool[0] = np.clip(gain * pool[1] + offset, 0, 1)
    recon = np.clip(0.3 * pool[1] + 0.4 + rng.normal(0, 0.05, pool[1].shape), 0, 1)
    got = metrics.ssim_adjusted_many(pool, recon)
    want = [metrics.ssim_adjusted(p, recon) for p in pool]
    assert np.allclose(got, want, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ matching and criteria


def test_batch_matching_is_one_to_one_and_maximises_total_ssim():
    x = _images(4, seed=1)
    recons = x[[2, 0, 3, 1]]  # a permutation: every image recovered, in another order
    s = score([x], [np.arange(4)], [recons], [np.array([2, 0, 3, 1])], threshold=0.9)
    assert s.leaked is None and s.leaked_paper.sum() == 4 and s.matched.all()
    np.testing.assert_array_equal(s.label_pred, np.arange(4))  # labels follow the assignment
    np.testing.assert_allclose(s.recons, x)
    import itertools

    sim, assigned = match(x, recons)
    best = max(sum(sim[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
    assert sum(sim[i, assigned[i]] for i in range(4)) == pytest.approx(best)


def test_one_good_reconstruction_of_a_batch_leaks_one_image_not_the_best_of_many():
    x = _images(8, seed=2)
    good = x[5:6]
    s = score([x], [np.arange(8)], [good], [np.array([5])], threshold=0.4)
    assert len(s.ssim) == 8 and s.leaked_paper.sum() == 1 and s.matched.sum() == 1
    s = score([x], [np.arange(8)], [np.repeat(good, 8, axis=0)], [np.full(8, 5)], threshold=0.9)
    assert s.leaked_paper.sum() == 1


def test_clients_are_scored_separately():
    a, b = _images(2, seed=3), _images(2, seed=4)
    s = score([a, b], [np.arange(2), np.arange(2)], [a, a], [np.arange(2), np.arange(2)], threshold=0.9)
    assert s.client.tolist() == [0, 0, 1, 1]
    assert s.leaked_paper.tolist() == [True, True, False, False]


def test_identification_needs_the_private_image_closer_than_every_candidate_decoy():
    x = _images(3, seed=5)
    decoys = _images(5, seed=6)
    # a reconstruction that is the private image: identified
    s = score([x], [np.array([0, 1, 2])], [x], [np.array([0, 1, 2])], 0.4, _pool(decoys))
    assert s.leaked.all() and (s.ssim_decoy_max < 0.5).all()
    # a reconstruction that is a public image: the paper's criterion may count it, identification does not
    close = np.clip(0.6 * decoys[:3] + 0.4 * x, 0, 1)   # resembles the private image, is the decoy more
    s = score([x], [np.array([0, 1, 2])], [close], [np.array([0, 1, 2])], 0.2, _pool(decoys))
    assert not s.leaked.any() and (s.ssim_decoy_max >= s.ssim_adjusted).all()


def test_every_decoy_is_a_candidate_unless_labels_are_matched():
    x = _images(1, seed=7)
    decoy = np.clip(x + 0.02 * _images(1, seed=14), 0, 1)   # almost the private image, of another label
    pool = _pool(np.concatenate([decoy, _images(2, seed=8)]), labels=[5, 1, 1])
    s = score([x], [np.array([1])], [decoy], [np.array([1])], 0.4, pool)
    assert not s.leaked.any()                   # by default the label-5 decoy is compared too
    pool = _pool(np.concatenate([decoy, _images(2, seed=8)]), labels=[5, 1, 1], match_labels=True)
    recon = decoy                                           # the reconstruction is that public image
    s = score([x], [np.array([1])], [recon], [np.array([1])], 0.4, pool)
    assert s.leaked.all()                       # only the label-1 decoys are compared
    s = score([x], [np.array([5])], [recon], [np.array([5])], 0.4, pool)
    assert not s.leaked.any() and s.leaked_paper.all()  # the label-5 decoy is, and it is closer
    s = score([x], [np.array([1])], [recon], [np.array([1])], 0.4, pool, decoy_labels=[np.array([-1])])
    assert not s.leaked.any()                   # an unknown label meets every decoy
    assert list(pool.candidates(3)) == [0, 1, 2]  # no decoy of label 3: all of them


def test_failed_clients_leak_nothing_and_are_counted():
    x = _images(2, seed=9)
    s = score([x, x], [np.arange(2)] * 2, [x, x], [np.arange(2)] * 2, 0.4, _pool(_images(3, seed=10)),
              failed=[True, False])
    assert s.failed.tolist() == [True, True, False, False]
    assert s.leaked.tolist() == [False, False, True, True] and s.leaked_paper.tolist() == s.leaked.tolist()
    assert s.summary()["failed"] == 2 and s.summary()["leaked"] == 2


def test_counts_by_label_add_up_to_the_summary_and_name_the_labels():
    from experiments.attack_cmd import label_line

    x = _images(4, seed=15)
    labels = np.array([1, 0, 1, 1])
    s = score([x], [labels], [x[[0, 1, 2, 0]]], [labels], 0.4, _pool(_images(3, seed=16)))
    by = s.by_label(("non-face", "face"))
    assert list(by) == [0, 1] and sum(c["images"] for c in by.values()) == 4
    assert sum(c["leaked"] for c in by.values()) == s.summary()["leaked"] == int(s.leaked.sum())
    assert sum(c["leaked_paper"] for c in by.values()) == s.summary()["leaked_paper"]
    assert by[0] == {"name": "non-face", "images": 1, "leaked": 1, "leaked_paper": 1}
    line = label_line(by)
    assert line.startswith("by label: non-face 1/1 identified (paper 1/1); face ")
    assert label_line(score([x], [labels], [x], [labels], 0.4).by_label()).startswith("by label: 0 no decoys")
    assert label_line({k: by[0] for k in range(21)}) is None   # too many labels to list


def test_score_validates_its_arguments():
    x = _images(2)
    with pytest.raises(ValueError, match="as many"):
        score([x], [np.arange(2)], [x, x], [np.arange(2)], 0.4)
    with pytest.raises(ValueError, match="client 0"):
        score([x], [np.arange(3)], [x], [np.arange(2)], 0.4)
    with pytest.raises(ValueError, match="one failed flag per client"):
        score([x], [np.arange(2)], [x], [np.arange(2)], 0.4, failed=[True, False])


def test_records_rescore_to_the_same_scores_and_follow_a_new_threshold(tmp_path):
    x, y = _images(4, seed=11), _images(4, seed=12)
    recons = [np.clip(x[[1, 0, 2, 3]] + 0.3 * _images(4, seed=15), 0, 1), y[:3]]
    preds = [np.array([1, 0, 2, 3]), np.array([0, 1, 2])]
    pool = _pool(_images(6, seed=13))
    s = score([x, y], [np.arange(4), np.arange(4)], recons, preds, 0.4, pool, failed=[False, False])
    path = save_record(tmp_path / "r.npz", s, recons, preds, [f"img{i}" for i in range(8)], {"leak-threshold": 0.4})
    rec = load_record(path)
    again = rescore(rec, 0.4, pool)
    for name in ("ssim_adjusted", "ssim_decoy_max", "leaked", "leaked_paper", "failed", "label_pred"):
        np.testing.assert_array_equal(getattr(again, name), getattr(s, name))
    assert rescore(rec, 0.999, pool).leaked_paper.sum() < s.leaked_paper.sum()
    assert rescore(rec, 0.4, None).leaked is None
    (tmp_path / "bad.npz").write_bytes(b"not a record")
    with pytest.raises(ValueError, match="bad.npz"):
        load_record(tmp_path / "bad.npz")


def test_dataset_pools_are_the_test_split_mirrored_where_flips_are_images_of_the_kind():
    from fl_defense.datasets import load_dataset

    digits = pool_for_dataset("mnist-embedded", size=200)
    assert len(digits) == 200 and np.bincount(digits.labels).min() == 20   # stratified
    _, test = load_dataset("lfw-embedded")
    faces = pool_for_dataset("lfw-embedded", exclude=np.arange(10))
    assert len(faces) == 2 * (len(test.labels) - 10)
    half = len(faces) // 2
    np.testing.assert_array_equal(faces.images.images[half:], faces.images.images[:half][..., ::-1])
    assert "mirror" in faces.source and "mirror" not in digits.source


def test_clopper_pearson_bounds():
    assert leak_upper95(0, 64) == pytest.approx(1 - 0.025 ** (1 / 64))
    assert leak_upper95(0, 16) == pytest.approx(0.2059, abs=1e-4)
    lo, hi = leak_interval95(32, 64)
    assert lo < 0.5 < hi and hi - lo < 0.3
    with pytest.raises(ValueError, match="leaks must be"):
        leak_upper95(5, 4)


def test_identification_also_needs_more_of_the_image_than_the_nearest_public_one_shows():
    """A reconstruction can be closer to its private image than to any decoy while a decoy
    resembles the private image more than the reconstruction does: not identified."""
    from fl_defense.scoring import judge

    adj, decoy, public = np.array([0.6, 0.6, 0.6]), np.array([0.5, 0.5, 0.7]), np.array([0.5, 0.65, 0.5])
    leaked, paper = judge(adj, decoy, public, np.zeros(3, bool), np.ones(3, bool), 0.4, True)
    assert leaked.tolist() == [True, False, False] and paper.all()
    x = _images(1, seed=16)
    near = np.clip(x + 0.05 * (_images(1, seed=17) - 0.5), 0, 1)    # a public image almost equal to it
    blurry = np.clip(0.5 * x + 0.25, 0, 1)                              # a weak reconstruction
    s = score([x], [np.array([0])], [blurry], [np.array([0])], 0.2, _pool(np.concatenate([near, _images(3, 18)])))
    assert s.ssim_public_max[0] > s.ssim_adjusted[0] * 0 and s.leaked_paper.all()
    assert s.leaked.tolist() == [bool(s.ssim_adjusted[0] > max(s.ssim_decoy_max[0], s.ssim_public_max[0]))]
    assert s.ssim_public_max[0] == pytest.approx(metrics.ssim_adjusted(x[0], near[0]), abs=1e-6)


def test_prepare_finds_each_nearest_look_alike_once_for_later_scoring():
    """``prepare`` computes ``nearest`` per (image, candidate label) ahead; scoring the same
    images then reads those values back (per label where decoys are matched by label)."""
    decoys, labels = _images(12, seed=30), np.arange(12) % 3
    pool = _pool(decoys, labels, match_labels=True)
    private, plab = _images(4, seed=31), np.array([0, 1, 2, 0])
    pool.prepare(private, plab)
    assert len(pool._nearest) == 4
    for x, y in zip(private, plab):
        want = max(metrics.ssim_adjusted(x, d) for d in decoys[labels == y])
        assert pool._nearest[(np.ascontiguousarray(x, np.float32).tobytes(), int(y))] == pytest.approx(want, abs=1e-6)
    s = score([private], [plab], [private], [plab], 0.4, pool)
    assert len(pool._nearest) == 4 and s.ssim_public_max.tolist() == [pool.nearest(x, int(y)) for x, y in zip(private, plab)]
