"""Training images: from a folder (+ labels CSV) or a Hugging Face dataset to one cached
uint8 tensor, plus a report of everything that was skipped, converted or upscaled.

Training sees only the tensor; this module is where the data is checked. Nothing is
silently replaced: a missing or unreadable image is left out and listed in the report,
never swapped for a blank one, and a source with no usable image is an error.

Decoding goes through `datasets.Dataset.map` with a cache file named by a key over the
files (path, size, mtime), the resolution and the preprocessing version, so a second run
on unchanged data decodes nothing. Every image is decoded by `images.open_rgb`, for
folders and hub datasets alike, so bad-input handling lives in one place.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.image_decoding import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageProblem,
    open_rgb,
    resize_and_crop,
)
from ddpm_lesion.data.labels import LabelTable, as_number, filter_rows, find_images, read_labels, resolve_ids

# Bump when preprocessing changes in a way that alters pixels, so old caches are not reused.
_PREPROCESS_VERSION = 1
_MAX_LISTED = 10
_FEATURES = datasets.Features(
    {
        "name": datasets.Value("string"),
        "pixels": datasets.Value("binary"),  # uint8 [3, R, R], C-order; None when unreadable
        "problem": datasets.Value("string"),  # ImageProblem reason, or None
        "converted_from": datasets.Value("string"),  # original mode when not RGB, or None
        "upscaled": datasets.Value("bool"),
    }
)


@dataclass
class DataReport:
    """What happened to the training data: shown before training, saved as JSON in the run folder.

    `rows` counts candidates (CSV rows after filters, image files in the folder, or
    dataset rows); `found` those that exist as files; `used` those that decoded and are
    in the tensor. Each list names what was left out or changed, and why.
    """

    source: str
    rows: int
    found: int
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    converted: list[tuple[str, str]] = field(default_factory=list)  # (file, original mode)
    upscaled: list[str] = field(default_factory=list)
    used: int = 0
    ambiguous: list[tuple[str, list[str]]] = field(default_factory=list)  # (id, matching files)
    notes: list[str] = field(default_factory=list)  # how the labels were read and filtered

    def to_text(self) -> str:
        """A short summary; each list shows its first entries and how many more there are."""
        lines = [f"Training data: {self.source}", f"  {self.rows} rows, {self.found} found, {self.used} used"]
        lines += [f"  {note}" for note in self.notes]
        sections = [
            ("missing (no image file for these ids)", self.missing),
            ("rejected ids (never opened)", [f"{i}: {why}" for i, why in self.rejected]),
            ("ambiguous ids (skipped; name the file in the CSV)", [f"{i}: {', '.join(f)}" for i, f in self.ambiguous]),
            ("duplicate ids (used once)", self.duplicates),
            ("unreadable images (skipped)", [f"{name}: {why}" for name, why in self.corrupt]),
            ("converted to RGB", [f"{name} (was {mode})" for name, mode in self.converted]),
            ("upscaled (smaller than the resolution)", self.upscaled),
        ]
        for title, items in sections:
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    {item}" for item in items[:_MAX_LISTED]]
                if len(items) > _MAX_LISTED:
                    lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingImages(NamedTuple):
    pixels: torch.Tensor  # uint8 [N, 3, R, R]
    report: DataReport
    names: list[str]  # source of each image, in tensor order
    classes: list[str] | None  # class of each image when `class_column` was given


def load_training_images(
    train_data_dir: Path | None,
    labels_csv: Path | None,
    label_filters: list[tuple[str, str]],
    id_column: str | None,
    resolution: int,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    image_column: str = "image",
    cache_dir: Path | None = None,
    class_column: str | None = None,
) -> TrainingImages:
    """Load, check and preprocess the training images.

    Args:
        train_data_dir: folder of images, searched recursively (or None with `dataset_name`).
        labels_csv: optional CSV choosing which images of the folder to use.
        label_filters: (column, value) pairs a CSV row must all match (`labels.parse_filter`).
        id_column: the CSV's id column, when its layout's default is wrong.
        resolution: output side length; shorter side resized to it, then centre-cropped.
        dataset_name: a hub dataset id, a local `save_to_disk` folder, or a folder
            `datasets.load_dataset` understands; used instead of `train_data_dir`.
        dataset_config_name: the hub dataset's configuration.
        image_column: the dataset column holding the images.
        cache_dir: where preprocessed images are cached (default `~/.cache/ddpm_lesion`).
        class_column: for one class-conditional model, the CSV column whose value is each
            image's class (e.g. ``dx``), or comma-separated one-hot columns
            (e.g. ``MEL,NV,BCC``: the class is the column holding 1).

    Returns:
        uint8 tensor [N, 3, resolution, resolution], the report, the source name of
        each image in tensor order (path relative to the folder, or ``dataset[index]``),
        and each image's class (None without `class_column`).

    Raises:
        UserError: bad option combination, unreadable source, or no usable image.
    """
    _check_options(train_data_dir, labels_csv, label_filters, resolution, dataset_name)
    if class_column is not None and labels_csv is None:
        raise UserError(f"--class_column {class_column} needs --labels_csv: the classes are read from its rows.")
    classes_by_name: dict[str, str] | None = None
    if dataset_name is not None:
        sources, report, key = _hub_sources(dataset_name, dataset_config_name, image_column)
    else:
        assert train_data_dir is not None  # _check_options guarantees one source
        sources, report, key, classes_by_name = _folder_sources(
            Path(train_data_dir), labels_csv, label_filters, id_column, class_column)
    cache_root = Path(cache_dir) if cache_dir else _default_cache_dir()
    processed = _preprocess(sources, resolution, cache_root / f"images-{_cache_key(key, resolution)}.arrow")
    pixels, report, names = _collect(processed, report, resolution)
    classes = None if classes_by_name is None else [classes_by_name[n] for n in names]
    return TrainingImages(pixels, report, names, classes)


# ------------------------------------------------------------------------ sources


def _check_options(
    train_data_dir: Path | None,
    labels_csv: Path | None,
    label_filters: list[tuple[str, str]],
    resolution: int,
    dataset_name: str | None,
) -> None:
    if resolution < 1:
        raise UserError(f"--resolution must be a positive number of pixels, got {resolution}.")
    if dataset_name is not None and train_data_dir is not None:
        raise UserError("Give either --train_data_dir or --dataset_name, not both.")
    if dataset_name is None and train_data_dir is None:
        raise UserError(
            "No training images: give --train_data_dir FOLDER (optionally with --labels_csv) or --dataset_name."
        )
    if dataset_name is not None and (labels_csv is not None or label_filters):
        raise UserError(
            "--labels_csv and --label_filter choose images from --train_data_dir; they do not apply to "
            f"--dataset_name {dataset_name}. Filter the dataset beforehand, or export its images to a folder."
        )
    if labels_csv is None and label_filters:
        raise UserError("--label_filter selects rows of --labels_csv; give --labels_csv too, or drop --label_filter.")


def _folder_sources(
    folder: Path, labels_csv: Path | None, label_filters: list[tuple[str, str]], id_column: str | None,
    class_column: str | None = None,
) -> tuple[datasets.Dataset, DataReport, dict[str, Any], dict[str, str] | None]:
    if not folder.is_dir():
        raise UserError(f"--train_data_dir {folder} does not exist or is not a folder. Check the path.")
    index = find_images(folder)
    if not index:
        raise UserError(
            f"--train_data_dir {folder} contains no images (looked recursively for {', '.join(IMAGE_EXTENSIONS)}, "
            "any letter case). Check the path."
        )
    classes_by_name = None
    if labels_csv is None:
        files = sorted(path for paths in index.values() for path in paths)
        report = DataReport(source=str(folder), rows=len(files), found=len(files))
    else:
        table = read_labels(Path(labels_csv), id_column)
        selected = filter_rows(table, label_filters)
        matched = resolve_ids(folder, table.ids(selected), index)
        files = [path for _, path in matched.found]
        if class_column is not None:
            row_of = dict(zip(table.ids(selected), selected))
            classes_by_name = {_relative(path, folder): row_class(table, row_of[image_id], class_column)
                               for image_id, path in matched.found}
        report = DataReport(
            source=f"{folder} (labels: {table.path})",
            rows=len(selected),
            found=len(files),
            missing=matched.missing,
            duplicates=matched.duplicate_ids,
            rejected=matched.rejected,
            ambiguous=[(i, [_relative(p, folder) for p in paths]) for i, paths in matched.ambiguous],
            notes=[_describe_labels(table, label_filters, len(selected))],
        )
        if not files:
            raise UserError(
                f"No training images: 0 of {len(selected)} rows of {table.path} were found in {folder}"
                f"{_first_problems(report)}. Check --train_data_dir (ids are matched to file names, with or "
                f"without extension) and --id_column (now {table.id_column!r})."
            )
    names = [_relative(path, folder) for path in files]
    sources = datasets.Dataset.from_dict({"name": names, "image": [str(p) for p in files]})
    key = {"files": [[str(p.resolve()), *_stat(p)] for p in files], "names": names}
    return sources.cast_column("image", datasets.Image(decode=False)), report, key, classes_by_name


def row_class(table: LabelTable, row: int, class_column: str) -> str:
    """The class of one CSV row: a column's value (``dx``) or, for comma-separated one-hot
    columns (``MEL,NV,...``), the name of the column that holds 1."""
    columns = [c.strip() for c in class_column.split(",")]
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise UserError(f"--class_column: {table.path} has no column {unknown[0]!r}; its columns are "
                        f"{', '.join(table.columns)}.")
    values = table.rows[row]
    if len(columns) == 1:
        return values[columns[0]]
    hot = [c for c in columns if as_number(values[c]) == 1.0]
    if len(hot) != 1:
        raise UserError(f"{table.path} line {table.line_numbers[row]}: expected exactly one of {', '.join(columns)} "
                        f"to be 1 (one-hot), found {len(hot)}. Fix the row or choose other --class_column columns.")
    return hot[0]


def _hub_sources(
    name: str, config: str | None, image_column: str
) -> tuple[datasets.Dataset, DataReport, dict[str, Any]]:
    dataset = _load_dataset(name, config)
    if image_column not in dataset.column_names:
        raise UserError(
            f"--dataset_name {name} has no column {image_column!r}; its columns are "
            f"{', '.join(dataset.column_names)}. Name the image column with --image_column."
        )
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise UserError(
            f"Column {image_column!r} of --dataset_name {name} holds {dataset.features[image_column]}, not images. "
            "Name the image column with --image_column."
        )
    if len(dataset) == 0:
        raise UserError(f"--dataset_name {name} has no rows in its train split.")
    sources = dataset.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    if image_column != "image":
        sources = sources.rename_column(image_column, "image")
    sources = sources.add_column("name", [f"{name}[{i}]" for i in range(len(dataset))])
    source = f"dataset {name}" + (f" ({config})" if config else "")
    report = DataReport(source=source, rows=len(dataset), found=len(dataset))
    key = {
        "dataset": [name, config, image_column],
        "files": [[f["filename"], *_stat(Path(f["filename"]))] for f in dataset.cache_files],
    }
    return sources, report, key


def _load_dataset(name: str, config: str | None) -> datasets.Dataset:
    """A hub id, or a local folder: `save_to_disk` output or anything `load_dataset` reads."""
    local = Path(name)
    saved = any((local / marker).is_file() for marker in ("dataset_info.json", "dataset_dict.json"))
    if saved and config is not None:
        raise UserError(f"--dataset_config_name does not apply to {name}, a folder written by save_to_disk; drop it.")
    try:
        # load_dataset uses the Hugging Face cache (HF_DATASETS_CACHE), so data downloaded
        # earlier is found offline; our cache_dir holds only preprocessed tensors.
        loaded = datasets.load_from_disk(str(local)) if saved else datasets.load_dataset(name, config, split="train")
    except (OSError, ValueError) as err:  # ConnectionError, DatasetNotFoundError, bad config, ...
        state = (
            "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
            if datasets.config.HF_HUB_OFFLINE
            else "it could not be found or downloaded"
        )
        raise UserError(
            f"Cannot load --dataset_name {name!r}" + (f" (config {config!r})" if config else "") + f": {state} "
            f"({type(err).__name__}: {err}). Check the id; download it once with network access (unset "
            "HF_HUB_OFFLINE and HF_DATASETS_OFFLINE), or pass a folder written by save_to_disk, or use "
            "--train_data_dir with a folder of images."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise UserError(f"--dataset_name {name} has no 'train' split (splits: {', '.join(loaded)}).")
        loaded = loaded["train"]
    return loaded


# ------------------------------------------------------------------------ decoding + cache


def _preprocess(sources: datasets.Dataset, resolution: int, cache_file: Path) -> datasets.Dataset:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    # datasets writes to a temporary file and renames it, so a reader never sees half a cache.
    return sources.map(
        _decode_example,
        fn_kwargs={"resolution": resolution},
        remove_columns=["image"],
        features=_FEATURES,
        cache_file_name=str(cache_file),
        new_fingerprint=cache_file.stem,
        load_from_cache_file=True,
        writer_batch_size=64,  # 64 x 3 x 512 x 512 bytes = 50 MB in memory at most
        desc="Decoding training images",
    )


def _decode_example(example: dict[str, Any], resolution: int) -> dict[str, Any]:
    image = example["image"]
    source = image["bytes"] if image["bytes"] is not None else Path(image["path"])
    try:
        rgb, original_mode = open_rgb(source)
    except ImageProblem as problem:
        return {"pixels": None, "problem": str(problem), "converted_from": None, "upscaled": False}
    pixels = np.asarray(resize_and_crop(rgb, resolution)).transpose(2, 0, 1)
    return {
        "pixels": np.ascontiguousarray(pixels).tobytes(),
        "problem": None,
        "converted_from": original_mode,
        "upscaled": min(rgb.size) < resolution,
    }


def _collect(
    processed: datasets.Dataset, report: DataReport, resolution: int
) -> tuple[torch.Tensor, DataReport, list[str]]:
    names = list(processed["name"])
    problems = list(processed["problem"])
    usable = [i for i, problem in enumerate(problems) if problem is None]
    report.corrupt = [(names[i], problem) for i, problem in enumerate(problems) if problem is not None]
    report.converted = [(n, mode) for n, mode in zip(names, processed["converted_from"]) if mode is not None]
    report.upscaled = [n for n, upscaled in zip(names, processed["upscaled"]) if upscaled]
    report.used = len(usable)
    if not usable:
        raise UserError(
            f"No training images: all {len(names)} images found in {report.source} are unreadable"
            f"{_first_problems(report)}. Replace or re-download them."
        )
    blob = bytearray(b"".join(processed.select(usable)["pixels"]))
    tensor = torch.frombuffer(blob, dtype=torch.uint8).reshape(len(usable), 3, resolution, resolution)
    return tensor, report, [names[i] for i in usable]


def _cache_key(source_key: dict[str, Any], resolution: int) -> str:
    content = {
        "version": _PREPROCESS_VERSION,
        "resolution": resolution,
        "max_pixels": DEFAULT_MAX_PIXELS,
        **source_key,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:32]


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm_lesion"


# ------------------------------------------------------------------------ small helpers


def _stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _describe_labels(table: LabelTable, label_filters: list[tuple[str, str]], kept: int) -> str:
    how = f"{table.format.value} layout, id column {table.id_column!r}, {table.encoding}"
    chosen = " and ".join(f"{c}={v}" for c, v in label_filters) or "no filter"
    return f"labels: {how}; {kept} of {len(table.rows)} rows kept ({chosen})"


def _first_problems(report: DataReport) -> str:
    details = []
    if report.missing:
        details.append("first missing ids: " + ", ".join(report.missing[:5]))
    if report.rejected:
        details.append("first rejected ids: " + ", ".join(f"{i} ({why})" for i, why in report.rejected[:3]))
    if report.corrupt:
        details.append("first unreadable: " + ", ".join(f"{n} ({why})" for n, why in report.corrupt[:3]))
    return "; " + "; ".join(details) if details else ""
