"""`ddpm-lesion evaluate`: are the synthetic images good, diverse and not copies?

Reads a real (ideally held-out) set, a synthetic set and optionally the training set;
scores synthetic against real in one or more feature spaces (KID first, because it is
unbiased at the few hundred images a rare lesion class has; FID, precision/recall,
density/coverage, diversity beside it); audits synthetic images for near copies of the
training images; writes the report. Training calls `evaluate_folders` at checkpoints and
keeps the checkpoint with the lowest `result["primary"]["value"]` (KID).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ddpm_lesion.core import run_files
from ddpm_lesion.core.config import option, to_plain_dict
from ddpm_lesion.core.devices import pick_device
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.version import __version__
from ddpm_lesion.data.evaluation_sets import ImageSet, load_image_set
from ddpm_lesion.evaluate import metrics
from ddpm_lesion.evaluate.copy_detection import CopyAudit, Nearest, build_index, find_copies, nearest_copies
from ddpm_lesion.evaluate.features import Extractor, FeatureSpace, extract, resolve_extractors
from ddpm_lesion.evaluate.report import write_report

FID_MIN_N = 2048  # below this FID's bias dominates differences between models (Bińkowski et al. 2018)


@dataclasses.dataclass
class EvalConfig:
    features: list[FeatureSpace] = option(
        ["auto"], "Feature space(s); repeat the flag for several. auto = FID Inception-v3 if its "
        "weights are found offline, else EfficientNet-Lite0, plus the pixel baseline.")
    inception_weights: Path | None = option(None, "FID Inception-v3 weights (pt_inception-2015-12-05-*.pth).",
                                            metavar="PATH")
    resolution: int = option(64, "Every set is resized (shorter side) and centre-cropped to this size first.")
    kid_subsets: int = option(50, "Random subsets for KID and its interval.")
    kid_subset_size: int = option(100, "Images per KID subset (capped at the smaller set).")
    nearest_k: int = option(5, "k of the k-NN balls for precision/recall/density/coverage.")
    copy_threshold: str = option("auto", "Near-copy alignment-distance threshold, or auto (per training image, "
                                 "calibrated on its own edited copies; README 'What counts as a copy').",
                                 metavar="auto|FLOAT")
    real_csv: Path | None = option(None, "Labels CSV selecting the real images (with --label_filter).", metavar="CSV")
    train_csv: Path | None = option(None, "Labels CSV selecting the training images (with --label_filter).",
                                    metavar="CSV")
    label_filter: list[str] = option([], "COLUMN=VALUE row filter for --real_csv/--train_csv; repeat to combine.",
                                     metavar="COL=VAL")
    id_column: str | None = option(None, "Id column of the labels CSVs, if not the layout's default.")
    seed: int = option(0, "Seed of the KID subsets.")
    batch_size: int = option(32, "Images per feature-extraction batch.")
    device: str = option("auto", "Torch device for feature extraction (auto: cuda if available).")

    def __post_init__(self) -> None:
        self.features = [FeatureSpace(f) for f in self.features]

    def threshold(self) -> float | None:
        if self.copy_threshold == "auto":
            return None
        try:
            return float(self.copy_threshold)
        except ValueError:
            raise UserError(f"--copy_threshold {self.copy_threshold!r}: give auto or a number such as 0.03.") from None


def _entry(value: float | None, n_real: int, n_synthetic: int, interval: tuple[float, float] | None = None,
           note: str = "", **extra) -> dict:
    low, high = interval if interval is not None else (None, None)
    return {"value": value, "ci_low": low, "ci_high": high, "n_real": n_real, "n_synthetic": n_synthetic,
            "note": note, **extra}


def score_space(real: np.ndarray, fake: np.ndarray, extractor: Extractor, config: EvalConfig) -> tuple[dict, list[str]]:
    """All set-vs-set metrics in one feature space, and any warnings about them."""
    n_real, n_fake, k = len(real), len(fake), config.nearest_k
    estimate = metrics.kid(real, fake, config.kid_subsets, config.kid_subset_size, config.seed)
    subset_size = min(config.kid_subset_size, n_real, n_fake)
    precision, recall = metrics.precision_recall(real, fake, k)
    density, coverage = metrics.density_coverage(real, fake, k)
    spread_fake, spread_real = metrics.mean_pairwise_distance(fake), metrics.mean_pairwise_distance(real)
    warnings = []
    fid_note = ""
    if min(n_real, n_fake) < max(FID_MIN_N, extractor.dim):
        fid_note = (f"N={min(n_real, n_fake)} < {max(FID_MIN_N, extractor.dim)}: biased upward, "
                    "compare only at equal N; trust KID")
        warnings.append(f"{extractor.key}: FID from {min(n_real, n_fake)} images is unreliable ({fid_note}).")
    scores = {
        "kid": _entry(estimate.mean, n_real, n_fake, (estimate.ci_low, estimate.ci_high),
                      f"{config.kid_subsets} subsets of {subset_size}; interval = 2.5-97.5th pct of subsets",
                      std=estimate.std, subsets=config.kid_subsets, subset_size=subset_size),
        "fid": _entry(metrics.fid_from_features(real, fake), n_real, n_fake, note=fid_note),
        "precision": _entry(precision, n_real, n_fake, metrics.wilson_interval(round(precision * n_fake), n_fake),
                            f"k={k}", k=k),
        "recall": _entry(recall, n_real, n_fake, metrics.wilson_interval(round(recall * n_real), n_real),
                         f"k={k}", k=k),
        "density": _entry(density, n_real, n_fake, note=f"k={k}; about 1 when synthetic matches real", k=k),
        "coverage": _entry(coverage, n_real, n_fake, metrics.wilson_interval(round(coverage * n_real), n_real),
                           f"k={k}", k=k),
        "diversity_synthetic": _entry(spread_fake, n_real, n_fake, note="mean pairwise distance among synthetic"),
        "diversity_real": _entry(spread_real, n_real, n_fake, note="mean pairwise distance among real"),
        "diversity_ratio": _entry(spread_fake / spread_real if spread_real else None, n_real, n_fake,
                                  note="synthetic / real; far below 1 suggests mode collapse"),
    }
    for entry in scores.values():
        entry["feature_space"] = extractor.key
    return {"description": extractor.description, "dim": extractor.dim, "metrics": scores}, warnings


def _check_sizes(real: ImageSet, synthetic: ImageSet, train: ImageSet | None, k: int) -> None:
    for image_set in (real, synthetic):
        if len(image_set.paths) <= k:
            raise UserError(f"--{image_set.role} {image_set.folder}: {len(image_set.paths)} usable images, but the "
                            f"k-NN metrics need more than --nearest_k={k}. Fix: add images or lower --nearest_k.")
    if train is not None and len(train.paths) < 2:
        raise UserError(f"--train {train.folder}: the copy check needs at least 2 training images.")


def sampler_images(folder: Path) -> Path:
    """The images of a folder: for a `sample_ddpm.py` output folder, its `individual/`
    subfolder, so the preview grids beside it are not scored as synthetic images."""
    images, grids = Path(folder) / run_files.SAMPLE_IMAGES_DIR, Path(folder) / run_files.SAMPLE_GRIDS_DIR
    return images if images.is_dir() and grids.is_dir() else Path(folder)


def _load_sets(real: Path, synthetic: Path, train: Path | None, config: EvalConfig) -> dict[str, ImageSet | None]:
    if config.train_csv is not None and train is None:
        raise UserError("--train_csv needs --train FOLDER (the folder holding the images the CSV names).")
    if config.label_filter and config.real_csv is None and config.train_csv is None:
        raise UserError("--label_filter selects rows of --real_csv/--train_csv; give one of them, or drop the filter.")
    sets = {
        "real": load_image_set("real", real, config.resolution, config.real_csv, config.label_filter, config.id_column),
        "synthetic": load_image_set("synthetic", sampler_images(synthetic), config.resolution),
        "train": None if train is None else load_image_set("train", train, config.resolution, config.train_csv,
                                                            config.label_filter, config.id_column),
    }
    _check_sizes(sets["real"], sets["synthetic"], sets["train"], config.nearest_k)
    return sets


def evaluate_folders(real: Path, synthetic: Path, train: Path | None = None, config: EvalConfig | None = None,
                     output_dir: Path | None = None) -> dict:
    """Score `synthetic` against `real` (and audit it against `train`); write the report into
    `output_dir` when given. Returns the metrics dict that `metrics.json` holds; the primary
    number (KID in the first feature space) is `result["primary"]["value"]`.

    Raises:
        UserError: a folder is missing or empty, a CSV or filter is wrong, or a set is too small.
    """
    config = config or EvalConfig()
    threshold = config.threshold()
    sets = _load_sets(real, synthetic, train, config)
    extractors, warnings = resolve_extractors(config.features, config.inception_weights, str(pick_device(config.device)))
    warnings += [f"{role}: {len(s.skipped)} unreadable image(s) skipped (listed in metrics.json)."
                 for role, s in sets.items() if s is not None and s.skipped]
    warnings += [f"{role}: {s.marked_synthetic} image(s) are marked synthetic=true in their PNG metadata: "
                 "synthetic images have got into a real image set." for role, s in sets.items()
                 if s is not None and role != "synthetic" and s.marked_synthetic]
    spaces, synthetic_feats = {}, {}
    for extractor in extractors:
        real_feats = extract(extractor, sets["real"].pixels, config.batch_size)
        synthetic_feats[extractor.key] = extract(extractor, sets["synthetic"].pixels, config.batch_size)
        spaces[extractor.key], space_warnings = score_space(real_feats, synthetic_feats[extractor.key], extractor,
                                                            config)
        warnings += space_warnings

    audit = real_vs_train = memorization = None
    if sets["train"] is None:
        warnings.append("No --train folder: synthetic images were not checked for copies of training images.")
    else:
        primary = extractors[0]
        train_feats = extract(primary, sets["train"].pixels, config.batch_size)
        index = build_index(sets["train"].pixels)
        audit = find_copies(sets["synthetic"].pixels, index, threshold, synthetic_feats[primary.key], train_feats)
        real_vs_train = nearest_copies(sets["real"].pixels, index, threshold)
        memorization = _memorization_summary(audit, real_vs_train, primary.key, len(train_feats))
        if audit.train_duplicates:
            warnings.append(f"train: {audit.train_duplicates} training images are (near-)exact duplicates of another "
                            "training image; they were left out of the copy-threshold calibration.")
        overlap = memorization["real_vs_train"]["n_near_copies"]
        if overlap:
            warnings.append(f"{overlap} real image(s) are near copies of training images: the real set is not "
                            "held out, so KID/FID against it flatter memorisation.")

    kid = spaces[extractors[0].key]["metrics"]["kid"]
    result = {
        "tool": f"ddpm-lesion evaluate {__version__}",
        "config": to_plain_dict(config),
        "inputs": {role: s.summary() if s is not None else None for role, s in sets.items()},
        "primary": {"metric": "kid", "feature_space": extractors[0].key, "value": kid["value"],
                    "ci_low": kid["ci_low"], "ci_high": kid["ci_high"]},
        "feature_spaces": spaces,
        "memorization": memorization,
        "warnings": warnings,
    }
    if output_dir is not None:
        write_report(Path(output_dir), result, sets["real"], sets["synthetic"], sets["train"], audit,
                     real_vs_train.distance if real_vs_train is not None else None)
    return result


def _memorization_summary(audit: CopyAudit, real_vs_train: Nearest, feature_space: str, n_train: int) -> dict:
    return {
        "n_synthetic": len(audit.near_copy), "n_train": n_train, "n_near_copies": int(audit.near_copy.sum()),
        "copy_rate": audit.copy_rate, "threshold": audit.threshold, "threshold_source": audit.threshold_source,
        "train_duplicates": audit.train_duplicates,
        "pixel_distance": "1 - cos of 24x24 windows of the 32x32 low-passed RGB image, per-channel zero-mean, unit "
                          "norm, min over 8 flips/rotations, shifts and zooms up to 12.5%",
        "feature_space": f"{feature_space} cosine distance",
        "synthetic_vs_train_distance": _quantiles(audit.pixel_distance),
        "train_vs_train_distance": _quantiles(audit.train_nn_distance) if len(audit.train_nn_distance) else None,
        "real_vs_train": {"n": len(real_vs_train.distance), "n_near_copies": int(real_vs_train.near_copy.sum()),
                          "distance": _quantiles(real_vs_train.distance)},
    }


def _quantiles(values: np.ndarray) -> dict:
    return {"min": float(values.min()), "p1": float(np.percentile(values, 1)),
            "median": float(np.median(values)), "max": float(values.max())}
