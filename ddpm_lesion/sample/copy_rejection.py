"""Copy rejection at generation time (`sample_ddpm.py --reject_copies TRAIN_DIR`, and by
default for a training run that records its image folder): a generated image that is a near
copy of a training image is never written; its slot takes the next image of a reserved,
deterministic index range instead.

Which image fills a slot must not depend on how the run was split or resumed, so the unit
is the canonical block of `batch_size` indices that sharding and resuming already work in:
every image of a block is checked, in index order; a rejected slot takes the next non-copy
candidate of the block's own reserve, the blocks `reserve_block(block, round)` far past any
run's indices, sampled one whole block at a time (the same batch size, so the candidates'
pixels are as reproducible as the run's). A block is thus filled the same way by any shard,
process or resumed run, whichever of its slots are still missing.

What was rejected travels inside the replacement PNG (text chunks `source_index` and
`rejected`), so `rejected.csv` is rebuilt from the images on disk like the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_lesion.core import run_files, wandb_review
from ddpm_lesion.core.config import load_yaml
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import write_csv_atomic
from ddpm_lesion.data.evaluation_sets import ImageSet, load_image_set
from ddpm_lesion.evaluate.copy_detection import CopyIndex, Nearest, build_index, nearest_copies

# Reserve blocks start at this index (far past any run) and give each block this many rounds.
RESERVE_START = 1 << 40
MAX_ROUNDS = 8
REJECTED_FIELDS = ("index", "candidate_index", "nearest_train_file", "distance", "threshold")


@dataclass(frozen=True)
class Reference:
    """The training images generated images must not copy: their copy index and names."""

    index: CopyIndex
    names: list[str]
    threshold: float | None


def load_reference(train_dir: Path, resolution: int, csv_path: Path | None, filters: list[str],
                   id_column: str | None, threshold: float | None) -> Reference:
    """Read the training images (selected by a labels CSV and filters, as for training) at
    the generated resolution and index them."""
    images = load_image_set("reject_copies", train_dir, resolution, csv_path, filters, id_column)
    return Reference(build_index(images.pixels), images.names, threshold)


@dataclass(frozen=True)
class TrainingSelection:
    """The training images a run of this tool recorded in its `train_config.yaml`: the
    folder, labels CSV, filters and resolution it selected and read them with. Read in one
    place so the default copy check and the nearest-training-image table of a sample run
    always look at the same images."""

    folder: Path
    csv_path: Path | None
    label_filter: list[str]
    id_column: str | None
    resolution: int

    def load(self, role: str) -> ImageSet:
        """The images themselves, at the run's resolution."""
        return load_image_set(role, self.folder, self.resolution, self.csv_path, self.label_filter, self.id_column)


def recorded_training_selection(source: str) -> tuple[Path | None, TrainingSelection | None]:
    """The training run folder `source` belongs to (None: no run of this tool) and the images
    it recorded (None: none to name, as for a run trained from `--dataset_name`)."""
    run = wandb_review.training_run_of(source)
    if run is None:
        return None, None
    trained = load_yaml(run / run_files.TRAIN_CONFIG)
    if not trained.get("train_data_dir"):
        return run, None
    return run, TrainingSelection(Path(trained["train_data_dir"]),
                                  Path(trained["labels_csv"]) if trained.get("labels_csv") else None,
                                  list(trained.get("label_filter") or []), trained.get("id_column"),
                                  int(trained["resolution"]))


def default_reference(source: str, recorded: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """The options naming the training images to check against (`--reject_copies`,
    `--train_csv`, `--label_filter`, `--id_column`) when `--reject_copies` is not given, and a
    log line saying which (None: no check, and why).

    Why on by default: fine-tuned on a few hundred images, a model does reproduce some of
    them (on ph2-dev up to 3 in 500 samples, at least one for most recipes measured,
    BENCHMARKS.md), and a user who builds a training set from the samples should not have to
    know to ask. The images are the ones the run was trained on, as its `train_config.yaml`
    recorded them (folder, labels CSV, filters). An output folder that recorded its own choice
    keeps it, so a resumed run checks what its first part checked. A model that is no training
    run of this tool, or whose images are not on this machine, is sampled unchecked, said in
    the log.
    """
    if recorded is not None and "reject_copies" in recorded:
        if recorded["reject_copies"] is None:
            return None, "copies not checked (as recorded in the folder)"
        options = _reference_options(recorded["reject_copies"], recorded.get("train_csv"),
                                     recorded.get("label_filter"), recorded.get("id_column"))
        return options, f"copies of the training images in {options['reject_copies']} rejected (as recorded in the folder)"
    how = "give --reject_copies TRAIN_DIR to check them"
    run, selection = recorded_training_selection(source)
    if run is None:
        return None, f"copies not checked: {source} is no training run folder, so its training images are unknown; {how}"
    if selection is None:
        return None, f"copies not checked: {run} was trained from --dataset_name; {how}"
    if not selection.folder.is_dir():
        return None, (f"warning: copies not checked: the training images of {run} ({selection.folder}) are not on "
                      f"this machine; {how}")
    options = _reference_options(selection.folder, selection.csv_path, selection.label_filter, selection.id_column)
    return options, (f"copies of the training images in {selection.folder} rejected (auto: from "
                     f"{run / run_files.TRAIN_CONFIG}; --no_reject_copies to keep them)")


def _reference_options(folder: str | Path, csv_path: str | Path | None, label_filter: list[str] | None,
                       id_column: str | None) -> dict[str, Any]:
    """The sampler options that name a reference (paths read from YAML are strings)."""
    return {"reject_copies": Path(folder), "train_csv": Path(csv_path) if csv_path else None,
            "label_filter": list(label_filter or []), "id_column": id_column}


@dataclass
class Slot:
    """What fills one slot of a block: the pixels, the index they were sampled as, and the
    near copies rejected on the way (`REJECTED_FIELDS` rows without the slot)."""

    pixels: np.ndarray
    source_index: int
    rejected: list[tuple[int, str, float, float]] = field(default_factory=list)


def reserve_block(block: int, round_: int, batch_size: int) -> int:
    """The block number of round `round_` of `block`'s reserve (its indices are
    `block_indices(reserve_block(...), batch_size)`, all >= `RESERVE_START`)."""
    first = -(-RESERVE_START // batch_size)
    return first + block * MAX_ROUNDS + round_


def fill_block(indices: Sequence[int], pixels: np.ndarray, reference: Reference,
               sample_reserve: Callable[[int], tuple[Sequence[int], np.ndarray]]) -> dict[int, Slot]:
    """Fill the slots `indices` (one block's wanted indices, in order) from the block's own
    uint8 `pixels` (row k = `indices[k]`), replacing near copies from the reserve.

    `sample_reserve(round)` returns the reserve round's indices and their pixels.
    """
    verdict = nearest_copies(pixels, reference.index, reference.threshold)
    slots: dict[int, Slot] = {}
    queue: list[tuple[int, np.ndarray, Nearest, int]] = []
    next_round = 0
    for k, slot in enumerate(indices):
        if not verdict.near_copy[k]:
            slots[slot] = Slot(pixels[k], slot)
            continue
        filled = Slot(pixels[k], slot, [_record(slot, verdict, k, reference)])
        while True:
            if not queue:
                if next_round == MAX_ROUNDS:
                    raise UserError(f"image {slot}: {MAX_ROUNDS} reserve batches in a row held only near copies of "
                                    "training images; this model reproduces its training set. Use an earlier "
                                    "checkpoint (see validation.csv's copy rate) or train on more images.")
                reserve_indices, reserve_pixels = sample_reserve(next_round)
                found = nearest_copies(reserve_pixels, reference.index, reference.threshold)
                queue = [(i, reserve_pixels[j], found, j) for j, i in enumerate(reserve_indices)]
                next_round += 1
            candidate, candidate_pixels, found, j = queue.pop(0)
            if found.near_copy[j]:
                filled.rejected.append(_record(candidate, found, j, reference))
            else:
                filled.pixels, filled.source_index = candidate_pixels, candidate
                break
        slots[slot] = filled
    return slots


def _record(candidate: int, found: Nearest, row: int, reference: Reference) -> tuple[int, str, float, float]:
    return (candidate, reference.names[found.index[row]], float(found.distance[row]), float(found.threshold[row]))


def png_fields(slot: Slot) -> dict[str, str]:
    """The PNG text chunks that record a replacement (none for an image kept as sampled)."""
    if not slot.rejected:
        return {}
    rows = [[c, name, round(distance, 6), round(threshold, 6)] for c, name, distance, threshold in slot.rejected]
    return {"source_index": str(slot.source_index), "rejected": json.dumps(rows)}


def rejected_rows(texts: Mapping[int, Mapping[str, str]]) -> list[dict[str, str]]:
    """`rejected.csv` rows rebuilt from the images' text chunks, by slot index."""
    rows = []
    for index in sorted(texts):
        for record in json.loads(texts[index].get("rejected", "[]")):
            rows.append(dict(zip(REJECTED_FIELDS, map(str, (index, *record)))))
    return rows


def write_rejected(path: Path, rows: list[dict[str, str]]) -> None:
    write_csv_atomic(path, REJECTED_FIELDS, rows)
