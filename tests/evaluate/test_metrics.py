"""Every metric against an independent computation: a closed form, scipy, explicit loops,
or a case worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ddpm_lesion.evaluate import metrics


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    var1, var2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2.0 * np.sqrt(var1 * var2))
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_on_full_covariances():
    rng = np.random.default_rng(1)
    dim = 12
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, 3 * dim))
    sigma1, sigma2 = a @ a.T / dim + 0.01 * np.eye(dim), b @ b.T / (3 * dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2.0 * root)
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_identical_gaussians_is_zero_and_shapes_are_checked():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(50, 4))
    assert metrics.fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _kid_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a·b/d + 1)³, written out term by term."""
    d = x.shape[1]

    def k(a, b):
        return (sum(a[i] * b[i] for i in range(d)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


def test_kid_matches_explicit_double_loop_when_one_subset_holds_everything():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 5)), rng.normal(0.4, 1.2, size=(9, 5))
    estimate = metrics.kid(x, y, subsets=3, subset_size=9, seed=0)
    expected = _kid_by_loops(x, y)
    # Every subset is a permutation of the whole set, so all three estimates are equal.
    assert estimate.mean == pytest.approx(expected, rel=1e-10)
    assert estimate.std == pytest.approx(0.0, abs=1e-12)
    assert estimate.ci_low == pytest.approx(expected) and estimate.ci_high == pytest.approx(expected)


def test_kid_subsets_are_the_mean_of_loop_estimates_on_the_same_draws():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(14, 3)), rng.normal(size=(11, 3)) + 1.0
    estimate = metrics.kid(x, y, subsets=4, subset_size=6, seed=7)
    draws = np.random.default_rng(7)
    values = [_kid_by_loops(x[draws.choice(14, 6, replace=False)], y[draws.choice(11, 6, replace=False)])
              for _ in range(4)]
    assert estimate.mean == pytest.approx(np.mean(values), rel=1e-10)
    assert estimate.std == pytest.approx(np.std(values), rel=1e-8)
    assert estimate.ci_low <= estimate.mean <= estimate.ci_high


def test_paired_kid_difference_is_the_difference_of_kids_on_the_same_draws():
    rng = np.random.default_rng(3)
    real, reference = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    candidate = reference + rng.normal(scale=0.5, size=(20, 4))
    paired = metrics.paired_kid_difference(real, candidate, reference, subsets=6, subset_size=8, seed=5)
    expected = (metrics.kid(real, candidate, subsets=6, subset_size=8, seed=5).mean
                - metrics.kid(real, reference, subsets=6, subset_size=8, seed=5).mean)
    assert paired.mean == pytest.approx(expected, rel=1e-12)
    draws = np.random.default_rng(5)
    by_loops = []
    for _ in range(6):
        r, f = draws.choice(30, 8, replace=False), draws.choice(20, 8, replace=False)
        by_loops.append(_kid_by_loops(real[r], candidate[f]) - _kid_by_loops(real[r], reference[f]))
    assert paired.low == pytest.approx(np.percentile(by_loops, 2.5))
    assert paired.high == pytest.approx(np.percentile(by_loops, 97.5))
    assert paired.candidate_lower == np.mean(np.array(by_loops) < 0)


def test_paired_kid_difference_of_a_set_with_itself_is_zero_and_rows_must_pair():
    rng = np.random.default_rng(0)
    real, synthetic = rng.normal(size=(12, 3)), rng.normal(size=(10, 3))
    assert metrics.paired_kid_difference(real, synthetic, synthetic, subsets=3, subset_size=5) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="same rows"):
        metrics.paired_kid_difference(real, synthetic, synthetic[:9])


def test_kid_is_near_zero_for_one_distribution_and_large_for_shifted_one():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same = metrics.kid(a, b, subsets=20, subset_size=100)
    shifted = metrics.kid(a, b + 2.0, subsets=20, subset_size=100)
    assert abs(same.mean) < 0.05 < shifted.mean
    assert shifted.ci_low > same.ci_high
    with pytest.raises(ValueError):
        metrics.kid(a[:1], b)


# A hand-worked 1-D case with k = 1.
#   real  = [0, 1, 3]          radii (1st NN): 1, 1, 2  -> balls [-1,1], [0,2], [1,5]
#   fake  = [0.5, 2.9, 10, 11] radii: 2.4, 2.4, 1, 1    -> balls [-1.9,2.9], [0.5,5.3], [9,11], [10,12]
#   precision: 0.5 and 2.9 lie in a real ball, 10 and 11 do not      -> 2/4
#   recall: 0, 1 (first fake ball) and 3 (second) are all covered   -> 3/3
#   density: 0.5 lies in 2 real balls, 2.9 in 1, the others in none -> 3 / (1 * 4)
#   coverage: every real ball holds some fake point                  -> 3/3
REAL_1D = np.array([[0.0], [1.0], [3.0]])
FAKE_1D = np.array([[0.5], [2.9], [10.0], [11.0]])


def test_precision_recall_density_coverage_hand_worked_1d():
    assert metrics.precision_recall(REAL_1D, FAKE_1D, k=1) == pytest.approx((0.5, 1.0))
    assert metrics.density_coverage(REAL_1D, FAKE_1D, k=1) == pytest.approx((0.75, 1.0))
    # Roles swapped: real ball [-1.9,2.9] holds fakes 0 and 1, [0.5,5.3] holds 1 and 3,
    # [9,11] and [10,12] hold none -> density 4/3, coverage 2/4; precision 1, recall 2/4.
    assert metrics.precision_recall(FAKE_1D, REAL_1D, k=1) == pytest.approx((1.0, 0.5))
    assert metrics.density_coverage(FAKE_1D, REAL_1D, k=1) == pytest.approx((4 / 3, 0.5))


def test_identical_sets_score_one_and_far_disjoint_clusters_score_zero():
    rng = np.random.default_rng(6)
    cloud = rng.normal(size=(60, 4))
    assert metrics.precision_recall(cloud, cloud, k=5) == (1.0, 1.0)
    density, coverage = metrics.density_coverage(cloud, cloud, k=5)
    assert coverage == 1.0 and 0.8 < density < 1.6
    far = cloud + 100.0
    assert metrics.precision_recall(cloud, far, k=5) == (0.0, 0.0)
    assert metrics.density_coverage(cloud, far, k=5) == (0.0, 0.0)


def test_same_distribution_density_is_about_one():
    rng = np.random.default_rng(7)
    density, coverage = metrics.density_coverage(rng.normal(size=(400, 3)), rng.normal(size=(400, 3)), k=5)
    assert density == pytest.approx(1.0, abs=0.15)
    assert coverage > 0.9


def test_k_must_leave_a_neighbour():
    with pytest.raises(ValueError):
        metrics.precision_recall(REAL_1D, FAKE_1D, k=3)


def test_mean_pairwise_distance_hand_worked():
    # Triangle with sides 3, 4, 5.
    points = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert metrics.mean_pairwise_distance(points) == pytest.approx(4.0)
    assert metrics.pairwise_distances(points, points[:1]).ravel() == pytest.approx([0.0, 5.0, 4.0])


def test_wilson_interval_hand_worked():
    # p = 0.8, n = 10: centre (0.8 + 0.19208) / 1.38416, half-width 1.96 * sqrt(0.016 + 0.009604) / 1.38416.
    assert metrics.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert metrics.wilson_interval(0, 5)[0] == 0.0 and metrics.wilson_interval(5, 5)[1] == 1.0


def test_fid_low_rank_route_equals_covariance_route():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(20, 64)), rng.normal(0.3, 1.5, size=(15, 64))
    expected = metrics.frechet_distance(*metrics.gaussian_stats(real), *metrics.gaussian_stats(fake))
    # Tolerance: on rank-deficient covariances the D x D route takes square roots of
    # eigenvalues that are zero up to rounding (~1e-16 -> ~1e-8 each).
    assert metrics.fid_from_features(real, fake) == pytest.approx(expected, rel=1e-7)


def test_off_colour_fraction_counts_blue_or_green_above_red():
    mean_rgb = np.array([[180, 120, 100],   # skin: red first
                         [90, 60, 120],     # purple: blue above red
                         [100, 140, 60],    # green above red
                         [120, 120, 120],   # grey: ties are not above red
                         [60, 70, 80]])     # blue-grey: both above red, counted once
    assert metrics.off_colour_fraction(mean_rgb) == pytest.approx(2 / 5 + 1 / 5)
    with pytest.raises(ValueError, match="3 columns"):
        metrics.off_colour_fraction(np.zeros((2, 4)))
