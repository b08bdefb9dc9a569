"""The wandb tables a reviewer sorts and filters: what happened to the training data, how
each checkpoint scored, each generated image beside its nearest training image, and the
evaluation's closest synthetic/training pairs.

Each function builds its rows from the files the commands already write (data_report.json,
validation.csv, best_checkpoint.json, nearest_neighbours.csv) or from the copy audit of
`copy_detection.find_copies`, so the dashboard shows the same numbers as the run folder.
wandb is imported inside the functions.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ddpm_lesion.core.wandb_review import image_cell
from ddpm_lesion.evaluate.copy_detection import CopyAudit, find_copies

DATA_REPORT_COLUMNS = ["problem", "file", "detail"]
VALIDATION_COLUMNS = ["step", "kid", "ci_low", "ci_high", "feature_space", "copy_rate", "best"]
SAMPLE_COLUMNS = ["index", "image", "seed", "sampler", "class", "nearest_train", "nearest_train_file",
                  "distance", "near_copy"]
PAIR_COLUMNS = ["rank", "synthetic", "nearest_train", "synthetic_file", "nearest_train_file", "pixel_distance",
                "copy_threshold", "feature_distance", "near_copy"]


def data_report_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per file left out or changed (`DataReport.to_dict()`): missing, unreadable,
    converted to RGB, upscaled, rejected, ambiguous or duplicate."""
    rows: list[list[Any]] = [["missing", name, "no image file for this id"] for name in report["missing"]]
    rows += [["corrupt", name, why] for name, why in report["corrupt"]]
    rows += [["converted", name, f"was {mode}"] for name, mode in report["converted"]]
    rows += [["upscaled", name, "smaller than the resolution"] for name in report["upscaled"]]
    rows += [["rejected", name, why] for name, why in report["rejected"]]
    rows += [["ambiguous", name, ", ".join(files)] for name, files in report["ambiguous"]]
    rows += [["duplicate", name, "listed more than once, used once"] for name in report["duplicates"]]
    return rows


def validation_rows(run_dir: Path, best_step: int | None) -> list[list[Any]]:
    """`validation.csv` of a run, one row per scored checkpoint, the best one flagged;
    `copy_rate` when the validation recorded one."""
    path = Path(run_dir) / "validation.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return [[int(r["step"]), float(r["kid"]), float(r["ci_low"]), float(r["ci_high"]), r["feature_space"],
                 float(r["copy_rate"]) if r.get("copy_rate") not in (None, "") else None,
                 int(r["step"]) == best_step] for r in csv.DictReader(handle)]


def _decode(paths: list[Path]) -> np.ndarray:
    """uint8 `(N, H, W, 3)` of images of one size (a generated set)."""
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def sample_audit(image_paths: list[Path], train_pixels: np.ndarray | None) -> CopyAudit | None:
    """The copy audit of the logged generated images against the training images (the
    evaluation's detector, calibrated on the training set), or None without them."""
    if train_pixels is None or len(train_pixels) < 2 or not image_paths:
        return None
    return find_copies(_decode(image_paths), train_pixels)


def sample_rows(indices: list[int], image_paths: list[Path], seed: int, sampler: str, class_label: str | None,
                train_paths: list[Path] | None, audit: CopyAudit | None) -> list[list[Any]]:
    """One row per generated image: where it came from (index, seed, sampler, class) and
    its nearest training image, distance and copy flag when the training images are known."""
    rows = []
    for row, (index, path) in enumerate(zip(indices, image_paths)):
        nearest = None if audit is None else train_paths[int(audit.nearest_index[row])]
        rows.append([index, image_cell(path), seed, sampler, class_label or "", image_cell(nearest),
                     None if nearest is None else str(nearest),
                     None if audit is None else float(audit.pixel_distance[row]),
                     None if audit is None else bool(audit.near_copy[row])])
    return rows


def pair_rows(neighbours_csv: Path, synthetic_dir: Path, train_dir: Path, limit: int) -> list[list[Any]]:
    """The evaluation's `limit` closest synthetic/training pairs (its nearest_neighbours.csv,
    closest to its threshold first), images side by side."""
    with Path(neighbours_csv).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    return [[rank + 1, image_cell(synthetic_dir / r["synthetic_file"]), image_cell(train_dir / r["nearest_train_file"]),
             r["synthetic_file"], r["nearest_train_file"], float(r["pixel_distance"]), float(r["copy_threshold"]),
             float(r["feature_distance"]) if r["feature_distance"] else None, r["near_copy"] == "1"]
            for rank, r in enumerate(rows)]
