"""The two image sets of `ddpm-lesion utility`, read once and checked for leakage.

Training set: the labels CSV `ddpm-lesion balance` writes, the user's own layout plus a
`synthetic` column (0/1); real rows' images live under `--train_data_dir`, synthetic
rows' under `--synthetic_data_dir`. Test set: a labels CSV of real images only.

A utility number is worthless if the test set leaks: a synthetic image scored as a real
patient, a training image scored again, or a patient seen in training. Each of those is
refused with a message naming the rows, files or patients, never silently dropped:
dropping would change the experiment behind the user's back. For the same reason every
listed image must be found and decodable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.image_decoding import ImageProblem, open_rgb, resize_and_crop
from ddpm_lesion.data.labels import (
    GROUP_COLUMNS,
    SYNTHETIC_COLUMN,
    CsvFormat,
    LabelTable,
    filter_rows,
    find_images,
    id_key,
    parse_filter,
    read_labels,
    resolve_ids,
)
from ddpm_lesion.sample.provenance import is_synthetic

"""Columns naming who or what an image shows. A value in both sets means the classifier
was tested on a patient (ISIC 2020) or a lesion (HAM10000) it was trained on."""

DEFAULT_POSITIVE: dict[CsvFormat, str] = {
    CsvFormat.ISIC2020: "target=1",
    CsvFormat.HAM10000: "dx=mel",
    CsvFormat.ISIC_ONEHOT: "MEL=1",
    CsvFormat.ISIC2017: "melanoma=1",
    CsvFormat.ISIC2016: "label=malignant",
}
"""Melanoma in each known layout: the default `--positive`."""

_FLAGS = {"0": False, "1": True, "false": False, "true": True, "0.0": False, "1.0": True}
_MAX_LISTED = 10


@dataclass
class LabelledImages:
    """Images of one set in CSV order: `pixels[i]` is `files[i]`, labelled `labels[i]`."""

    ids: list[str]
    files: list[Path]
    pixels: torch.Tensor  # uint8 [N, 3, R, R]
    labels: np.ndarray  # int64 [N], 1 = positive
    synthetic: np.ndarray  # bool [N]
    digests: list[str]  # sha256 of each file's bytes

    def summary(self) -> dict:
        real = ~self.synthetic
        return {"n": len(self.ids), "n_positive": int(self.labels.sum()),
                "n_real": int(real.sum()), "n_real_positive": int(self.labels[real].sum()),
                "n_synthetic": int(self.synthetic.sum()), "n_synthetic_positive": int(self.labels[~real].sum())}


@dataclass
class UtilityData:
    train: LabelledImages
    test: LabelledImages
    positive: str
    checks: list[str] = field(default_factory=list)  # what was verified, for the report
    warnings: list[str] = field(default_factory=list)


def _listed(items: list[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def choose_positive(table: LabelTable, positive: str | None) -> str:
    """`--positive`, or melanoma in the table's layout when it is not given."""
    if positive is not None:
        return positive
    if table.format in DEFAULT_POSITIVE:
        return DEFAULT_POSITIVE[table.format]
    raise UserError(f"Labels CSV {table.path}: its layout ({table.format.value}) has no known melanoma column. "
                    f"Say which rows are positive with --positive COLUMN=VALUE (columns: {', '.join(table.columns)}).")


def positive_labels(table: LabelTable, positive: str) -> np.ndarray:
    """1 for rows matching `--positive COLUMN=VALUE` (values compared as `labels.filter_rows`
    does), else 0. Both classes must occur, or no metric is defined."""
    column, value = parse_filter(positive)
    if column not in table.columns:
        raise UserError(f"--positive {positive}: labels CSV {table.path} has no column {column!r}. "
                        f"Its columns are: {', '.join(table.columns)}.")
    try:
        rows = filter_rows(table, [(column, value)])
    except UserError:
        seen = sorted({row[column] for row in table.rows})
        raise UserError(f"--positive {positive}: no row of labels CSV {table.path} is positive, so nothing can "
                        f"be measured. Values in column {column!r}: {_listed(seen)}.") from None
    labels = np.zeros(len(table.rows), dtype=np.int64)
    labels[rows] = 1
    if labels.all():
        raise UserError(f"--positive {positive}: every row of labels CSV {table.path} is positive; "
                        "the comparison needs negative cases too.")
    return labels


def synthetic_flags(table: LabelTable) -> np.ndarray:
    """The `synthetic` column as booleans (0/1/true/false, any case).

    Raises:
        UserError: the column is missing, or a cell is anything else (naming the line).
    """
    if SYNTHETIC_COLUMN not in table.columns:
        raise UserError(f"Labels CSV {table.path} has no {SYNTHETIC_COLUMN!r} column, so real and synthetic "
                        "images cannot be told apart. Give the CSV `ddpm-lesion balance` wrote, or add a column "
                        "synthetic with 1 for generated images and 0 for real ones.")
    flags = []
    for row, line in zip(table.rows, table.line_numbers):
        cell = row[SYNTHETIC_COLUMN].lower()
        if cell not in _FLAGS:
            raise UserError(f"Labels CSV {table.path}, line {line}: synthetic={row[SYNTHETIC_COLUMN]!r}; "
                            "write 1 (generated) or 0 (real).")
        flags.append(_FLAGS[cell])
    return np.array(flags, dtype=bool)


def check_test_rows_real(test: LabelTable) -> None:
    """Refuse test rows marked synthetic: the test set must be real patients only."""
    if SYNTHETIC_COLUMN not in test.columns:
        return
    marked = [f"line {line} ({row[test.id_column]})" for row, line in zip(test.rows, test.line_numbers)
              if _FLAGS.get(row[SYNTHETIC_COLUMN].lower(), True)]
    if marked:
        raise UserError(f"Test CSV {test.path}: {len(marked)} row(s) are not marked real (synthetic != 0): "
                        f"{_listed(marked)}. The test set must hold real images only; remove those rows.")


def check_disjoint(train: LabelTable, test: LabelTable) -> list[str]:
    """Refuse test ids, patients or lesions that also occur in the training CSV.

    Returns:
        The group columns that were compared (empty: patient overlap could not be checked).
    """
    train_ids = {id_key(i) for i in train.ids(list(range(len(train.rows))))}
    shared = [f"line {line} ({row[test.id_column]})" for row, line in zip(test.rows, test.line_numbers)
              if id_key(row[test.id_column]) in train_ids]
    if shared:
        raise UserError(f"Test CSV {test.path}: {len(shared)} image id(s) also appear in the training CSV "
                        f"{train.path}: {_listed(shared)}. Test images must never be trained on; remove them "
                        "from one of the two files.")
    compared = []
    for column in GROUP_COLUMNS:
        if column in train.columns and column in test.columns:
            seen = {row[column] for row in train.rows if row[column]}
            overlap = sorted({row[column] for row in test.rows if row[column] in seen})
            if overlap:
                raise UserError(f"Test CSV {test.path} and training CSV {train.path} share {len(overlap)} "
                                f"{column} value(s): {_listed(overlap)}. The test set must be {column}-disjoint "
                                "from training; move every image of those to one side.")
            compared.append(column)
    return compared


def _resolve(table: LabelTable, folder: Path, flag: str, rows: list[int]) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{flag} {folder} does not exist or is not a folder. Check the path.")
    found = resolve_ids(folder, table.ids(rows), find_images(folder))
    problems = ([f"{i} (no file)" for i in found.missing] + [f"{i} (listed twice)" for i in found.duplicate_ids]
                + [f"{i} ({why})" for i, why in found.rejected]
                + [f"{i} (matches {len(paths)} files)" for i, paths in found.ambiguous])
    if problems:
        raise UserError(f"Labels CSV {table.path}: {len(problems)} id(s) cannot be used from {flag} {folder}: "
                        f"{_listed(problems)}. Every listed image is needed for a fair comparison: fix the "
                        "ids or the folder (name the file in the CSV when an id matches several).")
    return [path for _, path in found.found]


def _decode(paths: list[Path], resolution: int) -> tuple[torch.Tensor, list[bool], list[str]]:
    """Decode each file once: pixels, whether its PNG says synthetic, and its sha256."""
    pixels, marked, digests = [], [], []
    for path in paths:
        data = path.read_bytes()
        try:
            image, _ = open_rgb(data)
        except ImageProblem as problem:
            raise UserError(f"Image {path} cannot be used: {problem}. Replace the file or remove its row.") from None
        pixels.append(np.asarray(resize_and_crop(image, resolution), dtype=np.uint8))
        marked.append(is_synthetic(data))
        digests.append(hashlib.sha256(data).hexdigest())
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).contiguous(), marked, digests


def _load(table: LabelTable, labels: np.ndarray, synthetic: np.ndarray, folders: dict[bool, tuple[str, Path]],
          resolution: int) -> LabelledImages:
    """Resolve and decode every row, real rows from folders[False], synthetic from folders[True]."""
    order, files = [], []
    for row_synthetic, (flag, folder) in folders.items():
        rows = [i for i in range(len(table.rows)) if synthetic[i] == row_synthetic]
        if rows:
            order += rows
            files += _resolve(table, folder, flag, rows)
    pixels, marked, digests = _decode(files, resolution)
    mislabelled = [f"{table.ids([i])[0]} ({path})" for i, path, mark in zip(order, files, marked)
                   if mark and not synthetic[i]]
    if mislabelled:
        raise UserError(f"{len(mislabelled)} image(s) listed as real in {table.path} carry the sampler's "
                        f"synthetic=true PNG mark: {_listed(mislabelled)}. Synthetic images must not pass as "
                        "real patients; mark their rows synthetic=1 (training) or remove them (test).")
    return LabelledImages(ids=table.ids(order), files=files, pixels=pixels, labels=labels[order],
                          synthetic=synthetic[order], digests=digests)


def _check_no_shared_files(train: LabelledImages, test: LabelledImages) -> None:
    by_digest = {digest: path for digest, path in zip(train.digests, train.files)}
    shared = [f"{path} = {by_digest[d]}" for d, path in zip(test.digests, test.files) if d in by_digest]
    if shared:
        raise UserError(f"{len(shared)} test image(s) are byte-identical to training images: {_listed(shared)}. "
                        "A copy under another name is still a training image; remove it from the test set.")


def load_utility_data(labels_csv: Path, train_data_dir: Path, synthetic_data_dir: Path | None, test_csv: Path,
                      test_data_dir: Path | None, positive: str | None, id_column: str | None,
                      resolution: int) -> UtilityData:
    """Read, check and decode the training and test sets (see the module docstring).

    Args:
        labels_csv: training CSV with a `synthetic` column.
        train_data_dir: folder of the real training images.
        synthetic_data_dir: folder of the synthetic images (default: `images/` beside `labels_csv`).
        test_csv: labels CSV of the real, held-out test images.
        test_data_dir: their folder (default: `train_data_dir`, as when one ISIC folder holds all).
        positive: `COLUMN=VALUE` of the positive class (default: melanoma in the CSV's layout).
        id_column: id column of both CSVs, if not their layout's default.
        resolution: side length images are resized and centre-cropped to.

    Raises:
        UserError: a file or column is missing, a label is unusable, or the test set leaks.
    """
    train_table, test_table = read_labels(Path(labels_csv), id_column), read_labels(Path(test_csv), id_column)
    positive = choose_positive(train_table, positive)
    train_labels, test_labels = positive_labels(train_table, positive), positive_labels(test_table, positive)
    train_synthetic = synthetic_flags(train_table)
    if not train_synthetic.any():
        raise UserError(f"Labels CSV {labels_csv} has no row with synthetic=1: there is nothing to evaluate. "
                        "Give the CSV `ddpm-lesion balance` wrote.")
    if train_labels[~train_synthetic].sum() == 0 or (1 - train_labels[~train_synthetic]).sum() == 0:
        raise UserError(f"Labels CSV {labels_csv}: the real rows hold only one class under --positive {positive}; "
                        "the real-only classifier needs both.")
    check_test_rows_real(test_table)
    compared = check_disjoint(train_table, test_table)
    synthetic_dir = Path(synthetic_data_dir) if synthetic_data_dir else Path(labels_csv).parent / "images"
    train = _load(train_table, train_labels, train_synthetic,
                  {False: ("--train_data_dir", Path(train_data_dir)), True: ("--synthetic_data_dir", synthetic_dir)},
                  resolution)
    test_dir = Path(test_data_dir) if test_data_dir else Path(train_data_dir)
    test = _load(test_table, test_labels, np.zeros(len(test_table.rows), dtype=bool),
                 {False: ("--test_data_dir", test_dir)}, resolution)
    _check_no_shared_files(train, test)
    checks = ["no test row is marked synthetic",
              "no test image carries the synthetic=true PNG mark",
              "no real training image carries the synthetic=true PNG mark",
              "no test id appears in the training CSV",
              "no test file is byte-identical to a training file"]
    checks += [f"no {column} value occurs in both sets" for column in compared]
    warnings = [] if compared else [
        f"Neither {' nor '.join(GROUP_COLUMNS)} is in both CSVs, so patient-disjointness was NOT verified. "
        "If a patient has images on both sides the scores are optimistic."]
    return UtilityData(train=train, test=test, positive=positive, checks=checks, warnings=warnings)
