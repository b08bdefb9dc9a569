"""`ddpm-lesion utility`: does adding the synthetic images improve melanoma detection on
real, held-out patients?

FID and KID say how the images look, not whether they help. This command trains the same
classifier (same seeds, same number of optimiser steps, same augmentations) on
(a) the real training images only, (b) real + synthetic, and by default (c) the real
images with the minority class oversampled: the cheap baseline synthetic data has to
beat. Every arm is scored on the same real, patient-disjoint test set; the uncertainty
from the test sample (paired stratified bootstrap of test images) and from the training
seed (paired differences across repeats) are both reported, and the verdict calls a
difference significant only when both intervals exclude zero.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ddpm_lesion.core.config import option, to_plain_dict
from ddpm_lesion.core.devices import pick_device
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.version import __version__
from ddpm_lesion.utility import classifier_metrics as clf_metrics
from ddpm_lesion.utility.classifier import Arch, TrainSettings, predict_scores, train_classifier
from ddpm_lesion.utility.classifier_data import UtilityData, load_utility_data
from ddpm_lesion.utility.report import write_utility_report

LEVEL = 0.95
REAL, SYNTHETIC, OVERSAMPLED = "real", "real+synthetic", "real-oversampled"
ARM_DESCRIPTIONS = {
    REAL: "real training images only",
    SYNTHETIC: "real + synthetic training images",
    OVERSAMPLED: "real training images with the minority class oversampled (each class drawn equally often)",
}
METRIC_NAMES = {"roc_auc": "ROC-AUC", "balanced_accuracy": "balanced accuracy",
                "recall": "positive-class recall (sensitivity)", "precision": "positive-class precision"}
GAIN, NO_GAIN, LOSS = "significant gain", "no significant gain", "significant loss"


@dataclasses.dataclass
class UtilityConfig:
    positive: str | None = option(None, "COLUMN=VALUE of the positive (minority) class; default: melanoma "
                                  "(target=1, dx=mel, MEL=1, ...) in the CSV's layout.", metavar="COL=VAL")
    id_column: str | None = option(None, "Id column of both CSVs, if not their layout's default.")
    arch: Arch = option(Arch.RESNET18, "Classifier trained in every arm (from scratch; no pretrained weights).")
    repeats: int = option(5, "Training seeds per arm (seed, seed+1, ...); the paired comparison runs across them.")
    epochs: int = option(10, "Passes over the largest arm's training set (real + synthetic); every arm takes "
                         "the same number of optimiser steps.")
    batch_size: int = option(32, "Training batch size.")
    learning_rate: float = option(1e-3, "AdamW learning rate.")
    resolution: int = option(64, "Images are resized (shorter side) and centre-cropped to this size.")
    oversampled_baseline: bool = option(True, "Also train arm (c): real images with the minority oversampled.")
    threshold: float = option(0.5, "Predicted probability at or above which a case counts as positive "
                              "(balanced accuracy, recall, precision).")
    primary_metric: str = option("roc_auc", "Metric the verdict is about.", choices=list(clf_metrics.METRICS))
    bootstrap_resamples: int = option(1000, "Stratified bootstrap resamples of the test set.")
    seed: int = option(0, "First training seed; also seeds the bootstrap.")
    device: str = option("auto", "Torch device (auto: cuda if available).")

    def check(self) -> None:
        if self.repeats < 2:
            raise UserError(f"--repeats {self.repeats}: the paired comparison needs at least 2 (5 or more advised).")
        for name in ("epochs", "bootstrap_resamples", "resolution"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size < 2:
            raise UserError(f"--batch_size {self.batch_size}: batch norm needs at least 2 images per batch.")
        if self.primary_metric not in clf_metrics.METRICS:
            raise UserError(f"primary_metric {self.primary_metric!r}: choose one of {', '.join(clf_metrics.METRICS)}.")
        if not 0.0 < self.threshold < 1.0:
            raise UserError(f"--threshold {self.threshold}: give a probability strictly between 0 and 1.")


def arm_training_sets(data: UtilityData, oversampled: bool) -> dict[str, tuple[np.ndarray, bool]]:
    """Each arm's training rows (indices into `data.train`) and whether it samples balanced.
    Test images are a separate object and can never appear here."""
    everything = np.arange(len(data.train.ids))
    real = everything[~data.train.synthetic]
    arms = {REAL: (real, False), SYNTHETIC: (everything, False)}
    if oversampled:
        arms[OVERSAMPLED] = (real, True)
    return arms


def train_and_score(data: UtilityData, config: UtilityConfig, device: torch.device) -> tuple[dict, np.ndarray]:
    """Train every arm for every seed and score the test set.

    Returns:
        Per-arm training facts, and scores `[arm, repeat, test image]` in arm order.
    """
    arms = arm_training_sets(data, config.oversampled_baseline)
    steps = config.epochs * math.ceil(len(data.train.ids) / config.batch_size)
    labels = torch.from_numpy(data.train.labels)
    scores = np.zeros((len(arms), config.repeats, len(data.test.ids)))
    facts = {}
    for a, (arm, (rows, balanced)) in enumerate(arms.items()):
        settings = TrainSettings(Arch(config.arch), steps, config.batch_size, config.learning_rate, balanced)
        index = torch.from_numpy(rows)
        for r in range(config.repeats):
            print(f"training {arm}, repeat {r + 1}/{config.repeats} ({steps} steps)", file=sys.stderr)
            model = train_classifier(data.train.pixels[index], labels[index], settings, config.seed + r, device)
            scores[a, r] = predict_scores(model, data.test.pixels, device)
        facts[arm] = {"description": ARM_DESCRIPTIONS[arm], "n_train": len(rows),
                      "n_train_positive": int(data.train.labels[rows].sum()),
                      "n_train_synthetic": int(data.train.synthetic[rows].sum()), "balanced_sampling": balanced,
                      "steps": steps, "seeds": [config.seed + r for r in range(config.repeats)]}
    return facts, scores


def metric_table(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """`[arm, repeat, metric]` values of `clf_metrics.METRICS` for scores `[arm, repeat, n]`."""
    return np.array([[list(clf_metrics.binary_metrics(y_true, s, threshold).values()) for s in arm] for arm in scores])


def bootstrap_tables(y_true: np.ndarray, scores: np.ndarray, threshold: float, n_resamples: int,
                     seed: int) -> np.ndarray:
    """`metric_table` on each stratified bootstrap resample of the test set: `[resample, arm, repeat, metric]`.
    The same resampled test images score every arm and repeat, so differences are paired."""
    indices = clf_metrics.stratified_bootstrap_indices(y_true, n_resamples, seed)
    return np.stack([metric_table(y_true[idx], scores[:, :, idx], threshold) for idx in indices])


def verdict(bootstrap_interval: tuple[float, float], seed_interval: tuple[float, float]) -> str:
    """GAIN or LOSS only when the test-patient interval and the across-seed interval of the
    difference both exclude zero on the same side; otherwise NO_GAIN."""
    lows, highs = (bootstrap_interval[0], seed_interval[0]), (bootstrap_interval[1], seed_interval[1])
    if min(lows) > 0:
        return GAIN
    if max(highs) < 0:
        return LOSS
    return NO_GAIN


def summarise(arms: list[str], point: np.ndarray, boot: np.ndarray) -> tuple[dict, list[dict]]:
    """Per-arm means with bootstrap intervals, and the comparisons of real+synthetic
    against each other arm (difference = real+synthetic - other)."""
    per_arm = {}
    for a, arm in enumerate(arms):
        per_arm[arm] = {}
        for m, metric in enumerate(clf_metrics.METRICS):
            low, high = clf_metrics.percentile_interval(boot[:, a, :, m].mean(axis=1), LEVEL)
            per_arm[arm][metric] = {"mean": float(point[a, :, m].mean()), "ci_low": low, "ci_high": high,
                                    "per_repeat": point[a, :, m].tolist()}
    comparisons = []
    s = arms.index(SYNTHETIC)
    for b, other in enumerate(arms):
        if b == s:
            continue
        entry = {"arm": SYNTHETIC, "versus": other, "metrics": {}}
        for m, metric in enumerate(clf_metrics.METRICS):
            differences = point[s, :, m] - point[b, :, m]
            boot_ci = clf_metrics.percentile_interval((boot[:, s, :, m] - boot[:, b, :, m]).mean(axis=1), LEVEL)
            paired = clf_metrics.paired_comparison(differences, LEVEL)
            entry["metrics"][metric] = {
                "difference": paired.mean, "per_repeat": differences.tolist(),
                "bootstrap_ci": list(boot_ci), "seed_t_ci": [paired.ci_low, paired.ci_high],
                "t_p_value": paired.t_p_value, "sign_flip_p_value": paired.sign_flip_p_value,
                "min_sign_flip_p_value": paired.min_sign_flip_p_value,
                "verdict": verdict(boot_ci, (paired.ci_low, paired.ci_high)),
            }
        comparisons.append(entry)
    return per_arm, comparisons


def verdict_sentence(comparisons: list[dict], metric: str, n_synthetic: int, repeats: int) -> str:
    """The answer in plain language, with both intervals behind it."""
    parts = []
    for entry in comparisons:
        m = entry["metrics"][metric]
        (b_low, b_high), (t_low, t_high) = m["bootstrap_ci"], m["seed_t_ci"]
        parts.append(f"{m['verdict']} over {ARM_DESCRIPTIONS[entry['versus']]}: {m['difference']:+.3f} "
                     f"(95% CI {b_low:+.3f} to {b_high:+.3f} over test images, {t_low:+.3f} to {t_high:+.3f} "
                     "over training seeds)")
    return (f"Adding {n_synthetic} synthetic images, {METRIC_NAMES[metric]} averaged over {repeats} seeds: "
            + "; ".join(parts) + ".")


def run_utility(labels_csv: Path, train_data_dir: Path, test_csv: Path, output_dir: Path | None,
                config: UtilityConfig, synthetic_data_dir: Path | None = None,
                test_data_dir: Path | None = None) -> dict:
    """Load and check the data, train every arm, score, compare and (with `output_dir`) write
    report.json, report.html, roc.png and predictions.csv. Returns the report dict.

    Raises:
        UserError: bad options, missing or unusable files, or a test set that leaks.
    """
    config.check()
    device = pick_device(config.device)
    data = load_utility_data(labels_csv, train_data_dir, synthetic_data_dir, test_csv, test_data_dir,
                             config.positive, config.id_column, config.resolution)
    facts, scores = train_and_score(data, config, device)
    arms = list(facts)
    y_test = data.test.labels
    point = metric_table(y_test, scores, config.threshold)
    boot = bootstrap_tables(y_test, scores, config.threshold, config.bootstrap_resamples, config.seed)
    per_arm, comparisons = summarise(arms, point, boot)
    for arm in arms:
        facts[arm]["metrics"] = per_arm[arm]
    n_synthetic = int(data.train.synthetic.sum())
    warnings = list(data.warnings)
    if config.repeats < 6:
        warnings.append(f"With {config.repeats} repeats the exact sign-flip test cannot reach p < 0.05 "
                        f"(smallest possible p = {2 / 2 ** config.repeats:.3g}); the verdict uses the t-interval.")
    result = {
        "tool": f"ddpm-lesion utility {__version__}",
        "config": to_plain_dict(config),
        "device": str(device),
        "inputs": {"labels_csv": str(labels_csv), "test_csv": str(test_csv), "positive": data.positive,
                   "train": data.train.summary(), "test": data.test.summary()},
        "leakage_checks": data.checks,
        "arms": facts,
        "comparisons": comparisons,
        "verdict": {"metric": config.primary_metric,
                    "sentence": verdict_sentence(comparisons, config.primary_metric, n_synthetic, config.repeats),
                    **{entry["versus"]: entry["metrics"][config.primary_metric]["verdict"] for entry in comparisons}},
        "warnings": warnings,
    }
    if output_dir is not None:
        write_utility_report(Path(output_dir), result, data.test.ids, y_test, scores)
    return result
