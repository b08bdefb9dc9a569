"""Classifier metrics and their uncertainty, as pure functions on label and score arrays.

`ddpm-lesion utility` asks whether synthetic images help a melanoma classifier; these are
the numbers it answers with. Nothing here knows about images or models: every function
takes `y_true` (0/1, 1 = the positive, minority class) and scores or predictions, so each
formula can be checked against a hand-worked case or an independent computation.

Uncertainty has two sources and each gets its own tool:
- which test cases happened to be sampled: a stratified bootstrap over test cases
  (`stratified_bootstrap_indices` + `percentile_interval`);
- which training seed was drawn: paired differences across repeats
  (`paired_comparison`: Student's t-interval and an exact sign-flip test).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import numpy as np

METRICS: tuple[str, ...] = ("roc_auc", "balanced_accuracy", "recall", "precision")
"""The metrics `binary_metrics` returns, in report order. Recall and precision are those
of the positive class (melanoma sensitivity and positive predictive value)."""

_EXACT_SIGN_FLIP_MAX_N = 16  # 2**16 sign patterns; beyond that, Monte Carlo
_MONTE_CARLO_FLIPS = 65_536


class Confusion(NamedTuple):
    tp: int
    fp: int
    tn: int
    fn: int


class PairedTest(NamedTuple):
    """Paired comparison of two arms across training repeats (difference = first - second).

    `ci_low`/`ci_high`: Student's t-interval of the mean difference. `t_p_value`: two-sided
    one-sample t-test of mean 0. `sign_flip_p_value`: two-sided exact sign-flip test, which
    assumes only that each difference is symmetric about 0 under the null; it can never go
    below `min_sign_flip_p_value` = 2 / 2**n (0.0625 for 5 repeats).
    """

    n: int
    mean: float
    ci_low: float
    ci_high: float
    t_p_value: float
    sign_flip_p_value: float
    min_sign_flip_p_value: float


def _labels(y_true: np.ndarray) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1 or not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be a 1-D array of 0/1 labels")
    return y.astype(bool)


def _both_classes(y: np.ndarray) -> None:
    if y.all() or not y.any():
        raise ValueError("y_true must hold both classes (at least one 0 and one 1)")


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray) -> Confusion:
    """Counts of the 2x2 confusion matrix, positive class = 1."""
    y, pred = _labels(y_true), _labels(y_pred)
    if len(y) != len(pred):
        raise ValueError(f"y_true has {len(y)} entries but y_pred has {len(pred)}")
    return Confusion(tp=int((y & pred).sum()), fp=int((~y & pred).sum()),
                     tn=int((~y & ~pred).sum()), fn=int((y & ~pred).sum()))


def recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TP / (TP + FN): the share of real positives found (sensitivity)."""
    c = confusion_counts(y_true, y_pred)
    if c.tp + c.fn == 0:
        raise ValueError("recall is undefined without positive cases")
    return c.tp / (c.tp + c.fn)


def precision(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """TP / (TP + FP): the share of flagged cases that are positive.

    A classifier that flags nothing gets 0, not "undefined" (scikit-learn's
    `zero_division=0`): in a screening comparison, finding no melanoma at all must not
    escape the table as a missing value.
    """
    c = confusion_counts(y_true, y_pred)
    return c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """(TPR + TNR) / 2 (Brodersen et al. 2010): accuracy that a classifier cannot inflate
    by always predicting the majority class (which scores exactly 0.5)."""
    c = confusion_counts(y_true, y_pred)
    if c.tp + c.fn == 0 or c.tn + c.fp == 0:
        raise ValueError("balanced accuracy needs both classes in y_true")
    return (c.tp / (c.tp + c.fn) + c.tn / (c.tn + c.fp)) / 2.0


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given the mean of the ranks they span (e.g. [5, 7, 7] -> [1, 2.5, 2.5])."""
    _, inverse, counts = np.unique(np.asarray(values), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.ravel()]


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic over n_pos * n_neg.

    AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg), R_pos = sum of the positives'
    midranks (Mann & Whitney 1947; Hanley & McNeil 1982). This is the probability that a
    random positive scores above a random negative, a tie counting one half, and equals
    the trapezoidal area under `roc_curve`.
    """
    y = _labels(y_true)
    _both_classes(y)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores has shape {s.shape} but y_true has {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    rank_sum = midranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score, highest threshold first, from (0, 0) to (1, 1).

    A case counts as positive when its score is >= the threshold; the first point has
    threshold +inf (nothing flagged). Tied scores move the curve diagonally, which is why
    its trapezoidal area is the tie-corrected AUC.

    Returns:
        (false positive rate, true positive rate, threshold) arrays of equal length.
    """
    y = _labels(y_true)
    _both_classes(y)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    fpr = np.r_[0.0, fps / (~y).sum()]
    tpr = np.r_[0.0, tps / y.sum()]
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every metric in `METRICS`; the thresholded ones flag a case when score >= `threshold`."""
    pred = (np.asarray(scores) >= threshold).astype(int)
    return {
        "roc_auc": roc_auc(y_true, scores),
        "balanced_accuracy": balanced_accuracy(y_true, pred),
        "recall": recall(y_true, pred),
        "precision": precision(y_true, pred),
    }


# ------------------------------------------------------------------------ test-set uncertainty


def stratified_bootstrap_indices(y_true: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """`(n_resamples, n)` index arrays, each drawn with replacement within each class.

    Resampling positives and negatives separately keeps the class counts of the test set
    in every resample, so AUC and balanced accuracy are always defined; it is the default
    of the pROC package (Robin et al. 2011). Applying the same index rows to every arm and
    repeat makes the bootstrap paired.
    """
    y = _labels(y_true)
    _both_classes(y)
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    rng = np.random.default_rng(seed)
    parts = [rng.choice(np.flatnonzero(y == c), size=(n_resamples, int((y == c).sum()))) for c in (True, False)]
    return np.concatenate(parts, axis=1)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles of bootstrap replicates: Efron's
    percentile interval (Efron & Tibshirani 1993, ch. 13)."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be between 0 and 1")
    low, high = np.percentile(np.asarray(samples, dtype=np.float64), [50.0 * (1 - level), 50.0 * (1 + level)])
    return float(low), float(high)


# ------------------------------------------------------------------------ seed-to-seed uncertainty


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer `df`, in closed form.

    Abramowitz & Stegun 26.7.3-4, with theta = atan(|t| / sqrt(df)):
    A = 2 theta / pi                                                       (df = 1)
    A = 2/pi [theta + sin(theta) (c + 2/3 c^3 + ... + (2*4..(df-3))/(1*3..(df-2)) c^(df-2))]   (odd)
    A = sin(theta) [1 + 1/2 c^2 + ... + (1*3..(df-3))/(2*4..(df-2)) c^(df-2)]                  (even)
    with c = cos(theta) and A = P(|T| < |t|). Closed forms keep scipy out of the runtime.
    """
    if df < 1:
        raise ValueError("df must be at least 1")
    theta = math.atan(abs(t) / math.sqrt(df))
    c, sin = math.cos(theta), math.sin(theta)
    if df % 2:
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):  # powers c^1, c^3, ..., c^(df-2)
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        inside = (2.0 / math.pi) * (theta + sin * total)
    else:
        term, total = 1.0, 0.0
        for k in range(1, df // 2 + 1):  # powers c^0, c^2, ..., c^(df-2)
            total += term
            term *= c * c * (2 * k - 1) / (2 * k)
        inside = sin * total
    return min(max(1.0 - inside, 0.0), 1.0)


def t_critical(level: float, df: int) -> float:
    """The t with P(|T| < t) = `level` for `df` degrees of freedom (bisection on `t_two_sided_p`)."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be between 0 and 1")
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 1.0 - level:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_two_sided_p(mid, df) > 1.0 - level:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def sign_flip_p_value(differences: np.ndarray, seed: int = 0) -> float:
    """Two-sided sign-flip (paired randomisation) test of "no difference" (Fisher 1935, §21).

    Under the null each paired difference is as likely to have either sign, so the p-value
    is the share of the 2**n sign patterns whose |mean| is at least the observed |mean|.
    Exact up to 16 pairs; beyond, 65,536 random patterns plus the observed one
    ((count + 1) / (draws + 1), Phipson & Smyth 2010).
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) < 1:
        raise ValueError("differences must be a non-empty 1-D array")
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))
    if len(d) <= _EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float((np.abs(signs @ d) / len(d) >= observed - tolerance).mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(_MONTE_CARLO_FLIPS, len(d)))
    count = int((np.abs(signs @ d) / len(d) >= observed - tolerance).sum())
    return (count + 1) / (_MONTE_CARLO_FLIPS + 1)


def paired_comparison(differences: np.ndarray, level: float = 0.95) -> PairedTest:
    """Mean of paired differences (one per repeat) with Student's t-interval and tests.

    t = mean / (s / sqrt(n)), df = n - 1; interval = mean +- t_crit * s / sqrt(n)
    (Student 1908). With zero spread the interval collapses to the mean and the t-test
    p-value is 0 (all differences equal and non-zero) or 1 (all zero).
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError("a paired comparison needs at least 2 differences")
    n, mean = len(d), float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:
        low = high = mean
        p = 1.0 if mean == 0.0 else 0.0
    else:
        half = t_critical(level, n - 1) * se
        low, high = mean - half, mean + half
        p = t_two_sided_p(mean / se, n - 1)
    return PairedTest(n=n, mean=mean, ci_low=low, ci_high=high, t_p_value=p,
                      sign_flip_p_value=sign_flip_p_value(d), min_sign_flip_p_value=min(1.0, 2.0 / 2 ** n))
