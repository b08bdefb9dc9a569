"""An evaluation image set: a folder (every image in it) or a labels CSV + folder (the rows
that pass `--label_filter`), decoded and brought to one square resolution.

Every set — real, synthetic, training — is prepared with training's own
`image_decoding.resize_and_crop` (shorter side to the resolution, centre crop), so the metrics
compare content, not resolution or resampling. Files that cannot be decoded are skipped and counted, never
replaced by blanks, and the counts go into the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.image_decoding import ImageProblem, open_rgb, resize_and_crop
from ddpm_lesion.data.labels import filter_rows, find_images, parse_filter, read_labels, resolve_ids

# PNG text keys the sampler writes into synthetic images; shown, never relied on.
PROVENANCE_KEYS = ("synthetic", "model_sha256", "seed", "index")


@dataclass
class ImageSet:
    """Decoded images of one set, `pixels[i]` read from `paths[i]`."""

    role: str
    folder: Path
    paths: list[Path]
    pixels: np.ndarray
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unresolved: dict[str, int] = field(default_factory=dict)
    provenance: list[dict[str, str]] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Paths relative to the set's folder, as shown in the report and the CSV."""
        return [p.relative_to(self.folder).as_posix() for p in self.paths]

    def summary(self) -> dict:
        return {
            "folder": str(self.folder),
            "n": len(self.paths),
            "skipped_unreadable": len(self.skipped),
            "skipped_files": [{"file": name, "reason": why} for name, why in self.skipped],
            "unresolved_csv_ids": self.unresolved,
            "marked_synthetic": self.marked_synthetic,
            "model_sha256": sorted({p["model_sha256"] for p in self.provenance if "model_sha256" in p}),
        }

    @property
    def marked_synthetic(self) -> int:
        """How many images say `synthetic=true` in their PNG text (written by the sampler)."""
        return sum(p.get("synthetic") == "true" for p in self.provenance)


def _paths_from_csv(role: str, folder: Path, csv: Path, filters: list[str], id_column: str | None
                    ) -> tuple[list[Path], dict[str, int]]:
    table = read_labels(csv, id_column)
    ids = table.ids(filter_rows(table, [parse_filter(f) for f in filters]))
    resolution = resolve_ids(folder, ids)
    unresolved = {"missing": len(resolution.missing), "duplicate": len(resolution.duplicate_ids),
                  "rejected": len(resolution.rejected), "ambiguous": len(resolution.ambiguous)}
    if not resolution.found:
        raise UserError(f"{role}: none of the {len(ids)} ids selected from {csv} matches an image in {folder} "
                        f"({unresolved}). Fix: point --{role} at the folder holding those images.")
    return [path for _, path in resolution.found], {k: v for k, v in unresolved.items() if v}


def load_image_set(role: str, folder: Path, resolution: int, csv: Path | None = None,
                   filters: list[str] | None = None, id_column: str | None = None) -> ImageSet:
    """Read one set. `role` ("real", "synthetic", "train") names the flag in error messages.

    Raises:
        UserError: the folder is missing, holds no images, or none of them can be decoded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--{role} {folder}: no such folder. Fix: give the folder that holds the {role} images.")
    if csv is not None:
        paths, unresolved = _paths_from_csv(role, folder, csv, filters or [], id_column)
    else:
        paths, unresolved = [p for group in find_images(folder).values() for p in group], {}
    if not paths:
        raise UserError(f"--{role} {folder} holds no image files (.png, .jpg, ...). Fix: point it at the image folder.")
    kept, pixels, skipped, provenance = [], [], [], []
    for path in paths:
        try:
            image, _ = open_rgb(path)
        except ImageProblem as problem:
            skipped.append((path.relative_to(folder).as_posix(), str(problem)))
            continue
        kept.append(path)
        pixels.append(np.asarray(resize_and_crop(image, resolution), dtype=np.uint8))
        provenance.append({k: str(image.info[k]) for k in PROVENANCE_KEYS if k in image.info})
    if not kept:
        raise UserError(f"--{role} {folder}: none of its {len(paths)} image files can be decoded "
                        f"(first: {skipped[0][0]}: {skipped[0][1]}). Fix: replace the corrupt files.")
    return ImageSet(role, folder, kept, np.stack(pixels), skipped, unresolved, provenance)
