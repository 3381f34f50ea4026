"""The scorer: one-to-one matching of reconstructions to private images."""

import numpy as np
import pytest

from attacks.scoring import match, score, score_single
from fl_defense import metrics


def _images(n, seed=0, size=12):
    rng = np.random.default_rng(seed)
    base = rng.random((n, 1, size, size))
    return np.clip(base, 0, 1).astype(np.float32)


def test_single_image_scores_reconstruction_against_its_own_image():
    x = _images(3)
    s = score_single(x, np.array([1, 2, 3]), x[[0, 1, 2]], np.array([1, 0, 3]), threshold=0.9)
    np.testing.assert_allclose(s.ssim, 1.0)
    assert s.leaked.tolist() == [True, True, True]
    assert s.summary()["label_acc"] == pytest.approx(2 / 3)
    # a reconstruction of another image does not count for this one
    s = score_single(x, np.array([1, 2, 3]), x[[1, 2, 0]], np.array([1, 2, 3]), threshold=0.9)
    assert not s.leaked.any()


def test_batch_matching_is_one_to_one_and_maximises_total_ssim():
    x = _images(4, seed=1)
    recons = x[[2, 0, 3, 1]]  # a permutation: every image recovered, in another order
    s = score([x], [np.arange(4)], [recons], [np.array([2, 0, 3, 1])], threshold=0.9)
    assert s.leaked.sum() == 4 and s.matched.all()
    np.testing.assert_array_equal(s.label_pred, np.arange(4))  # labels follow the assignment
    np.testing.assert_allclose(s.recons, x)
    # the assignment's total equals the brute-force best over all permutations
    import itertools

    sim, assigned = match(x, recons)
    best = max(sum(sim[i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
    assert sum(sim[i, assigned[i]] for i in range(4)) == pytest.approx(best)


def test_one_good_reconstruction_of_a_batch_leaks_one_image_not_the_best_of_many():
    x = _images(8, seed=2)
    good = x[5:6]  # one reconstruction, perfect for image 5
    s = score([x], [np.arange(8)], [good], [np.array([5])], threshold=0.4)
    assert len(s.ssim) == 8 and s.leaked.sum() == 1 and s.matched.sum() == 1
    assert s.summary()["leaked"] == 1
    # the same reconstruction duplicated still recovers only one image
    s = score([x], [np.arange(8)], [np.repeat(good, 8, axis=0)], [np.full(8, 5)], threshold=0.9)
    assert s.leaked.sum() == 1


def test_clients_are_scored_separately():
    a, b = _images(2, seed=3), _images(2, seed=4)
    # client 1's reconstructions are client 0's images: they must not leak client 1
    s = score([a, b], [np.arange(2), np.arange(2)], [a, a], [np.arange(2), np.arange(2)], threshold=0.9)
    assert s.client.tolist() == [0, 0, 1, 1]
    assert s.leaked.tolist() == [True, True, False, False]
    np.testing.assert_allclose(s.ssim_adjusted[:2], 1.0)
    assert s.ssim_adjusted[2:].max() < 0.5
    assert s.ssim_adjusted[2] == pytest.approx(metrics.ssim_adjusted(b[0], a[s.label_pred[2]]))


def test_score_validates_its_arguments():
    x = _images(2)
    with pytest.raises(ValueError, match="as many"):
        score([x], [np.arange(2)], [x, x], [np.arange(2)], 0.4)
    with pytest.raises(ValueError, match="client 0"):
        score([x], [np.arange(3)], [x], [np.arange(2)], 0.4)
