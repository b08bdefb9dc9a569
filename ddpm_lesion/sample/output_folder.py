"""The sampling output folder: its layout, what it already holds, whether a run may write
there, and the manifest and grids that summarise it.

Layout (the origin's, plus provenance records)::

    OUT/individual/<prefix>_<index>.png   one image per index, zero-padded to 6 digits
    OUT/grids/preview_grid_{16,36,64}.png the first 16/36/64 images
    OUT/manifest.csv                      one row per image, rebuilt from the PNGs' metadata
    OUT/rejected.csv                      with --reject_copies: the near copies turned down, likewise
    OUT/sample_config.yaml                the options, reusable with --config

A folder is only ever resumed with the settings its images were made with, and never
mixed with files this tool did not write, so "a synthetic folder" stays a precise claim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from ddpm_lesion.core import run_files
from ddpm_lesion.core.config import load_yaml, save_config, to_plain_dict
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.figures import encode_png
from ddpm_lesion.core.fileio import TEMP_SUFFIX, write_bytes_atomic
from ddpm_lesion.core.grids import make_grid
from ddpm_lesion.core.resume_guard import resume_differences
from ddpm_lesion.sample.copy_rejection import rejected_rows, write_rejected
from ddpm_lesion.sample.provenance import (
    IDENTITY_KEYS,
    made_by_this_tool,
    manifest_row,
    png_text,
    read_png_text,
    write_manifest,
)

INDEX_DIGITS = 6
GRID_SIZES = (16, 36, 64)
LOCK_NAME = ".ddpm-lesion.lock"

_IMAGE_NAME = re.compile(r"(?P<prefix>.+)_(?P<index>\d+)\.png")
_GRID_NAME = re.compile(r"preview_grid_\d+\.png")
# `fileio.write_atomic` writes `.NAME.<random>.tmp` beside NAME.
_TEMP_NAME = re.compile(rf"\.(?P<target>.+)\.[A-Za-z0-9_]+{re.escape(TEMP_SUFFIX)}")


@dataclasses.dataclass(frozen=True)
class OutputLayout:
    root: Path
    prefix: str

    @property
    def individual(self) -> Path:
        return self.root / run_files.SAMPLE_IMAGES_DIR

    @property
    def grids(self) -> Path:
        return self.root / run_files.SAMPLE_GRIDS_DIR

    @property
    def manifest(self) -> Path:
        return self.root / run_files.SAMPLE_MANIFEST

    @property
    def rejected(self) -> Path:
        return self.root / run_files.SAMPLE_REJECTED

    @property
    def config(self) -> Path:
        return self.root / run_files.SAMPLE_CONFIG

    def image_path(self, index: int) -> Path:
        return self.individual / f"{self.prefix}_{index:0{INDEX_DIGITS}d}.png"

    def grid_path(self, size: int) -> Path:
        return self.grids / f"preview_grid_{size}.png"


@dataclasses.dataclass
class ExistingOutputs:
    """What an output folder holds, sorted by who wrote it."""

    images: dict[int, dict[str, str]] = dataclasses.field(default_factory=dict)  # index -> PNG text, current prefix
    other_prefixes: dict[str, int] = dataclasses.field(default_factory=dict)  # prefix -> images of ours
    ours: list[Path] = dataclasses.field(default_factory=list)  # everything this tool wrote
    foreign: list[Path] = dataclasses.field(default_factory=list)
    saved_config: dict[str, Any] | None = None


def inspect_output(layout: OutputLayout) -> ExistingOutputs:
    """Sort every file under the output folder into this tool's outputs and others'."""
    found = ExistingOutputs()
    if layout.root.exists() and not layout.root.is_dir():
        raise UserError(f"--output_dir {layout.root} is a file, not a folder.")
    if not layout.root.is_dir():
        return found
    folders = {layout.individual.name, layout.grids.name}
    files = {layout.manifest.name, layout.rejected.name, layout.config.name, LOCK_NAME}
    for path in sorted(layout.root.iterdir()):
        if path.name in folders and path.is_dir():
            continue  # sorted below
        ours = (path.name in files and path.is_file()) or _TEMP_NAME.fullmatch(path.name)
        (found.ours if ours else found.foreign).append(path)
    found.saved_config = recorded_config(layout)
    for path in sorted(layout.grids.iterdir()) if layout.grids.is_dir() else []:
        (found.ours if _GRID_NAME.fullmatch(path.name) or _TEMP_NAME.fullmatch(path.name) else found.foreign).append(path)
    for path in sorted(layout.individual.iterdir()) if layout.individual.is_dir() else []:
        _sort_image_entry(path, layout, found)
    return found


def recorded_config(layout: OutputLayout) -> dict[str, Any] | None:
    """The options an earlier run saved in the folder (`sample_config.yaml`), if any."""
    return load_yaml(layout.config) if layout.config.is_file() else None


def _sort_image_entry(path: Path, layout: OutputLayout, found: ExistingOutputs) -> None:
    if _TEMP_NAME.fullmatch(path.name):  # a write in flight (another shard) or killed half-way
        found.ours.append(path)
        return
    match = _IMAGE_NAME.fullmatch(path.name)
    text = _png_text_or_none(path) if match and path.is_file() else None
    if text is None or not made_by_this_tool(text):
        found.foreign.append(path)
        return
    found.ours.append(path)
    prefix = match["prefix"]
    if prefix == layout.prefix and path == layout.image_path(int(match["index"])):
        found.images[int(match["index"])] = text
    else:
        found.other_prefixes[prefix] = found.other_prefixes.get(prefix, 0) + 1


def _png_text_or_none(path: Path) -> dict[str, str] | None:
    try:
        return read_png_text(path)
    except (UnidentifiedImageError, OSError):
        return None


def settings_differences(existing: ExistingOutputs, settings: Mapping[str, str], config: Mapping[str, Any],
                         may_change: Collection[str], prefix: str) -> list[str]:
    """Why the existing outputs cannot be resumed with these settings; [] if they can."""
    problems = []
    if existing.saved_config is not None:
        lines = resume_differences(existing.saved_config, config, may_change)
        if lines:
            problems.append("sample_config.yaml: " + "; ".join(lines))
    made_with = Counter(tuple(text.get(k) for k in IDENTITY_KEYS) for text in existing.images.values())
    for identity, count in made_with.items():
        lines = resume_differences(dict(zip(IDENTITY_KEYS, identity)), {k: settings.get(k) for k in IDENTITY_KEYS}, ())
        if lines:
            problems.append(f"{count} image(s) in individual/: " + "; ".join(lines))
    for other, count in existing.other_prefixes.items():
        problems.append(f"{count} image(s) in individual/: prefix: {other!r} -> {prefix!r}")
    return problems


def prepare_output(layout: OutputLayout, settings: Mapping[str, str], config: Any, may_change: Collection[str],
                   overwrite: bool, log: Callable[[str], None]) -> None:
    """Check (or, with `overwrite`, clear) the folder, create it and save `config` (a
    config dataclass) as `sample_config.yaml`."""
    existing = inspect_output(layout)
    if overwrite:
        for path in existing.ours:
            path.unlink(missing_ok=True)
        if existing.ours:
            log(f"--overwrite: deleted {len(existing.ours)} earlier output file(s) of this tool in {layout.root}.")
        if existing.foreign:
            log(f"--overwrite: left {len(existing.foreign)} file(s) this tool did not write in {layout.root} untouched.")
        existing = ExistingOutputs()
    else:
        if existing.foreign:
            shown = ", ".join(str(p.relative_to(layout.root)) for p in existing.foreign[:3])
            more = f" and {len(existing.foreign) - 3} more" if len(existing.foreign) > 3 else ""
            raise UserError(
                f"{layout.root} holds {len(existing.foreign)} file(s) this tool did not write ({shown}{more}). "
                f"Synthetic images are not mixed with other files: choose a new or empty --output_dir, or pass "
                f"--overwrite to write there anyway (it never deletes files this tool did not write).")
        problems = settings_differences(existing, settings, to_plain_dict(config), may_change, layout.prefix)
        if problems:
            raise UserError(
                f"{layout.root} already holds outputs made with other settings:\n  " + "\n  ".join(problems)
                + "\nRerun with the original settings to resume, choose a new --output_dir, or pass --overwrite "
                  "to delete this tool's earlier outputs there and start over.")
    layout.individual.mkdir(parents=True, exist_ok=True)
    layout.grids.mkdir(parents=True, exist_ok=True)
    with folder_lock(layout):
        save_config(config, layout.config)


def remove_leftovers(layout: OutputLayout, indices: Iterable[int]) -> int:
    """Delete half-written temp files of these images (a killed run's leftovers).

    Only the caller's own indices: another shard job may be writing its images right now,
    and its temp files look the same."""
    owned = {layout.image_path(i).name for i in indices}
    removed = 0
    for path in layout.individual.glob(f".*{TEMP_SUFFIX}"):
        match = _TEMP_NAME.fullmatch(path.name)
        if match and match["target"] in owned:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def folder_lock(layout: OutputLayout) -> Iterator[None]:
    """Serialise manifest/grid/config writes between shard jobs sharing a folder, so the
    job that finishes last always writes a manifest that includes every job's images.
    Where the file system has no locks, runs unlocked (the rebuild is still correct once
    every job is done; rerunning any shard command refreshes it)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(layout.root / LOCK_NAME, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def finalize(layout: OutputLayout, num_images: int, settings: Mapping[str, str],
             reject_copies: bool = False) -> tuple[list[Path], int]:
    """Rebuild the manifest (and with `reject_copies` rejected.csv) from the images on disk
    and write the preview grids whose images all exist. Returns the grids written and the
    number of near copies rejected for the images on disk."""
    with folder_lock(layout):
        images = inspect_output(layout).images
        write_manifest(layout.manifest, (manifest_row(layout.image_path(i), layout.root, images[i])
                                         for i in sorted(images)))
        rejected = rejected_rows(images)
        if reject_copies:
            write_rejected(layout.rejected, rejected)
        written = []
        for size in GRID_SIZES:
            if size <= num_images and all(i in images for i in range(size)):
                grid = make_grid([_load(layout.image_path(i)) for i in range(size)], ncols=math.isqrt(size))
                write_bytes_atomic(layout.grid_path(size), encode_png(grid, png_text(settings)))
                written.append(layout.grid_path(size))
        return written, len(rejected)


def _load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.copy()
