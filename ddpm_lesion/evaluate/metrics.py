"""Sample-quality metrics as pure functions on feature arrays.

Nothing here knows how the features were made (Inception, EfficientNet, raw pixels): every
function takes `(N, D)` arrays and returns numbers, so the same code scores any feature
space and the tests can check each formula on hand-built point clouds. Arrays are
converted to float64 first; at a few hundred images that costs nothing and keeps the
Fréchet distance's matrix square root stable.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class KidEstimate(NamedTuple):
    """KID over random subsets: mean and std of the per-subset unbiased MMD² estimates and
    the 2.5th/97.5th percentiles of those estimates (the spread of a KID computed from
    `subset_size` images — a conservative interval for the mean)."""

    mean: float
    std: float
    ci_low: float
    ci_high: float


def _as_2d(features: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {array.shape}")
    return array


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of `(N, D)` features, as in Heusel et al. 2017."""
    feats = _as_2d(features, "features")
    if len(feats) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(feats)}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False).reshape(feats.shape[1], feats.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues
    below zero, which only rounding produces, are clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = ||mu1 - mu2||² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½)
    (Dowson & Landau 1982; used as FID by Heusel et al. 2017, "GANs Trained by a Two
    Time-Scale Update Rule Converge to a Local Nash Equilibrium").

    Tr((sigma1 sigma2)^½) is computed as Tr((A sigma2 A)^½) with A = sigma1^½: the two
    matrices are similar, and the second is symmetric PSD, so an eigendecomposition gives
    it without the complex round-off of a general matrix square root.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape}/{mu2.shape}, sigma {sigma1.shape}/{sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = float(np.sqrt(np.clip(cross, 0.0, None)).sum())
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt), 0.0)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID (Heusel et al. 2017) between two feature sets. Biased upwards at small N: compare
    values only at the same N, and prefer KID below a few thousand images.

    With fewer samples than dimensions the covariances are low-rank, and the D x D route
    wastes time (seconds at D = 2048). Writing sigma1 = AᵀA, sigma2 = BᵀB with A, B the
    centred features over sqrt(N - 1), the non-zero eigenvalues of sigma1 sigma2 are those
    of (ABᵀ)(ABᵀ)ᵀ, so Tr((sigma1 sigma2)^½) is the sum of the singular values of the small
    N1 x N2 matrix ABᵀ. Same value, exactly; `frechet_distance` is used otherwise.
    """
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    if max(len(real), len(fake)) >= real.shape[1]:
        return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    if min(len(real), len(fake)) < 2:
        raise ValueError("need at least 2 samples in each set")
    a = (real - real.mean(0)) / np.sqrt(len(real) - 1)
    b = (fake - fake.mean(0)) / np.sqrt(len(fake) - 1)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = real.mean(0) - fake.mean(0)
    return max(float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * trace_sqrt), 0.0)


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)³, the KID kernel of Bińkowski et al. 2018."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² estimate with the polynomial kernel (Bińkowski et al. 2018,
    "Demystifying MMD GANs", eq. 3; Gretton et al. 2012, lemma 6): within-set kernel sums
    exclude the diagonal; the cross term uses every pair."""
    m, n = len(a), len(b)
    k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2.0 * k_ab.mean())


def _kid_subsets(n_real: int, n_fake: int, subsets: int, subset_size: int, seed: int
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (real rows, synthetic rows) of each KID subset: `subset_size` (capped at the
    smaller set) drawn without replacement from each set, from one seeded stream, so that
    two scores with the same seed and set sizes use the same draws."""
    size = min(subset_size, n_real, n_fake)
    if size < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {n_real} real and {n_fake} synthetic")
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1, got {subsets}")
    rng = np.random.default_rng(seed)
    return [(rng.choice(n_real, size, replace=False), rng.choice(n_fake, size, replace=False))
            for _ in range(subsets)]


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 100, seed: int = 0) -> KidEstimate:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² averaged over
    `subsets` random subsets of `subset_size` images drawn without replacement from each
    set (capped at the smaller set's size). Unbiased, so it is comparable across N and can
    be slightly negative when the sets are indistinguishable.
    """
    real, fake = _as_2d(real, "real"), _as_2d(fake, "fake")
    values = np.array([mmd2_unbiased(real[r], fake[f])
                       for r, f in _kid_subsets(len(real), len(fake), subsets, subset_size, seed)])
    low, high = np.percentile(values, [2.5, 97.5])
    return KidEstimate(float(values.mean()), float(values.std()), float(low), float(high))


class PairedDifference(NamedTuple):
    """KID(candidate) - KID(reference) over the same random subsets: the mean difference,
    the 2.5th/97.5th percentiles of the per-subset differences, and the share of subsets
    where the candidate scored lower."""

    mean: float
    low: float
    high: float
    candidate_lower: float


def paired_kid_difference(real: np.ndarray, candidate: np.ndarray, reference: np.ndarray, subsets: int = 100,
                          subset_size: int = 100, seed: int = 0) -> PairedDifference:
    """How much worse (positive) or better `candidate` scores than `reference` against `real`.

    Two synthetic sets made from the same initial noise (row i of both from image i's noise)
    are compared subset by subset: each subset draws the same real images and the same rows
    of both sets. Most of KID's subset-to-subset spread comes from which real images are
    drawn and is shared by both sets, so the paired differences are far tighter than the
    two KID intervals side by side. The draws are those of `kid(real, reference, ...)` with
    the same seed, so `mean` is exactly `kid(real, candidate).mean - kid(real, reference).mean`.
    """
    real, candidate, reference = (_as_2d(real, "real"), _as_2d(candidate, "candidate"),
                                  _as_2d(reference, "reference"))
    if len(candidate) != len(reference):
        raise ValueError(f"paired sets must have the same rows, got {len(candidate)} and {len(reference)}")
    deltas = [mmd2_unbiased(real[r], candidate[f]) - mmd2_unbiased(real[r], reference[f])
              for r, f in _kid_subsets(len(real), len(candidate), subsets, subset_size, seed)]
    low, high = np.percentile(deltas, [2.5, 97.5])
    return PairedDifference(float(np.mean(deltas)), float(low), float(high), float(np.mean(np.array(deltas) < 0)))


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances between every row of `a` and every row of `b`, `(len(a), len(b))`."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(squared, 0.0, None))


def kth_neighbour_radius(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest *other* point in the same set: the
    radius of the k-NN ball that approximates the set's manifold (Kynkäänniemi et al. 2019)."""
    feats = _as_2d(features, "features")
    if not 1 <= k < len(feats):
        raise ValueError(f"k must be between 1 and N-1 = {len(feats) - 1}, got k={k}")
    distances = pairwise_distances(feats, feats)
    np.fill_diagonal(distances, np.inf)
    return np.partition(distances, k - 1, axis=1)[:, k - 1]


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and
    Recall Metric for Assessing Generative Models", eq. 1-3).

    precision: fraction of synthetic samples inside at least one real sample's k-NN ball
    (are the synthetic images realistic?). recall: fraction of real samples inside at least
    one synthetic sample's k-NN ball (is the real variety covered?). A point on a ball's
    boundary counts as inside.
    """
    real_radius, fake_radius = kth_neighbour_radius(real, k), kth_neighbour_radius(fake, k)
    distances = pairwise_distances(real, fake)
    precision = (distances <= real_radius[:, None]).any(axis=0).mean()
    recall = (distances <= fake_radius[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


def density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics
    for Generative Models", eq. 5-6), built on real k-NN balls only, so outliers among the
    synthetic samples cannot inflate them.

    density = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))]  (≈1 when fake matches real;
    can exceed 1). coverage = 1/N Σ_i 1[∃ j: Y_j ∈ B(X_i, NND_k(X_i))].
    """
    real_radius = kth_neighbour_radius(real, k)
    inside = pairwise_distances(real, fake) <= real_radius[:, None]
    density = inside.sum() / (k * inside.shape[1])
    coverage = inside.any(axis=1).mean()
    return float(density), float(coverage)


def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over all unordered pairs of distinct samples: a simple
    diversity score (compare synthetic against real in the same feature space; a collapsed
    generator scores far below the real set)."""
    feats = _as_2d(features, "features")
    if len(feats) < 2:
        raise ValueError(f"need at least 2 samples, got {len(feats)}")
    upper = np.triu_indices(len(feats), k=1)
    return float(pairwise_distances(feats, feats)[upper].mean())


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); 95% for z = 1.96.
    Used for precision, recall and coverage, treating the counted images as independent
    trials given the other set (the uncertainty of the k-NN radii is not included)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


def off_colour_fraction(mean_rgb: np.ndarray) -> float:
    """Fraction of images whose mean colour (an `(N, 3)` array of per-image mean R, G, B)
    has blue or green above red. Skin, lesion and blood are red-dominant under a
    dermatoscope's white light (0.6% of the PH² dev patches are not), so a generator that
    makes blue, purple, green or yellow squares shows its pretraining prior through; KID
    in an ImageNet feature space weighs colour too little to flag this on its own."""
    rgb = _as_2d(mean_rgb, "mean_rgb")
    if rgb.shape[1] != 3:
        raise ValueError(f"mean_rgb must have 3 columns (R, G, B), got {rgb.shape[1]}")
    return float(((rgb[:, 2] > rgb[:, 0]) | (rgb[:, 1] > rgb[:, 0])).mean())
