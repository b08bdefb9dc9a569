"""Labels CSVs -> the image ids of the class to train on, and those ids -> files.

The lesion classes we fine-tune on are chosen from the label files the datasets ship
with. Their layouts differ (ISIC 2016 has no header; 2018/2019 are one-hot; HAM10000
and ISIC 2020 have metadata columns), so the layout is detected from the header and the
id column follows from it. Choosing the class is a plain column filter
(`--label_filter target=1`, `--label_filter dx=mel`), the same for every layout.

Ids come from a file someone else wrote, so they are only ever matched against an index
of the images folder built here; an id can never name a file outside that folder.
"""

from __future__ import annotations

import csv
import enum
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.image_decoding import IMAGE_EXTENSIONS, is_image_file


class CsvFormat(str, enum.Enum):
    """Known label-file layouts, recognised from the header (ISIC 2016: from the rows)."""

    IMAGE_LIST = "image_list"  # origin project: one column `image_name`, one id a line
    ISIC2016 = "isic2016"  # no header: `ISIC_0000000,benign` (test set: `ISIC_0000003,0.0`)
    ISIC2017 = "isic2017"  # image_id,melanoma,seborrheic_keratosis
    ISIC_ONEHOT = "isic_onehot"  # 2018/2019: image,MEL,NV,BCC,AK(IEC),BKL,DF,VASC[,SCC,UNK]
    ISIC2020 = "isic2020"  # image_name,patient_id,...,benign_malignant,target
    HAM10000 = "ham10000"  # lesion_id,image_id,dx,dx_type,age,sex,localization
    GENERIC = "generic"  # any other CSV with a header; id column guessed or given


# Column names given to the header-less ISIC 2016 file. `label` holds "benign"/"malignant"
# (training set) or 0/1 with 1 = malignant (test set); both spellings filter the same way.
ISIC2016_COLUMNS = ["image_id", "label"]
_ISIC2016_CLASSES = {"benign": "0", "malignant": "1"}

_FORMAT_ID_COLUMN = {
    CsvFormat.IMAGE_LIST: "image_name",
    CsvFormat.ISIC2016: "image_id",
    CsvFormat.ISIC2017: "image_id",
    CsvFormat.ISIC_ONEHOT: "image",
    CsvFormat.ISIC2020: "image_name",
    CsvFormat.HAM10000: "image_id",
}
# Id columns tried, in order, for a GENERIC file (`isic_id`: the current ISIC archive export).
_GENERIC_ID_COLUMNS = ("image_name", "image_id", "image", "isic_id", "filename", "file_name", "file")
_DELIMITERS = (",", ";", "\t")
_ISIC_ID = re.compile(r"^ISIC_\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_BOOLEANS = {"true": 1.0, "false": 0.0}
_MAX_LISTED = 10


@dataclass(frozen=True)
class LabelTable:
    """A labels CSV as read: the file's own columns and cells (stripped), plus how it was read.

    `line_numbers[i]` is the 1-based line of `rows[i]` in the file, kept apart so a row
    has exactly the file's columns.
    """

    path: Path
    format: CsvFormat
    id_column: str
    columns: list[str]
    rows: list[dict[str, str]]
    line_numbers: list[int]
    has_header: bool
    delimiter: str
    encoding: str  # "utf-8", "utf-8-sig" (BOM) or "latin-1" (not valid UTF-8)

    def ids(self, row_indices: list[int]) -> list[str]:
        """The id cell of each of the given rows, in that order."""
        return [self.rows[i][self.id_column] for i in row_indices]


@dataclass
class Resolution:
    """What became of each requested id. Every id lands in exactly one list."""

    found: list[tuple[str, Path]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)  # listed once, used once
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    ambiguous: list[tuple[str, list[Path]]] = field(default_factory=list)


# ------------------------------------------------------------------------ reading


def read_labels(path: Path, id_column: str | None = None) -> LabelTable:
    """Read a labels CSV, detecting encoding, delimiter, header and layout.

    Args:
        path: the CSV file.
        id_column: the column holding image ids; overrides the layout's default.

    Raises:
        UserError: the file is missing, empty, has a header but no rows, has rows of the
            wrong width, or has no usable id column.
    """
    path = Path(path)
    text, encoding = _decode(path)
    delimiter = _sniff_delimiter([line for line in _lines(text) if line.strip()])
    records = _parse(text, delimiter)
    if not records:
        raise UserError(f"Labels CSV {path} is empty. Point --labels_csv at the file that lists the image ids.")
    first = records[0][1]
    has_header = not _looks_like_data(first)
    if has_header:
        columns = first
        body = records[1:]
        table_format = _format_from_header(columns)
    else:
        table_format, columns = _headerless_format(path, first)
        body = records
    _check_columns(path, columns)
    if not body:
        raise UserError(
            f"Labels CSV {path} has a header ({delimiter.join(columns)}) but no rows. "
            "Add one row per image, or point --labels_csv at the full file."
        )
    rows, line_numbers = [], []
    for line, cells in body:
        if len(cells) != len(columns):
            raise UserError(
                f"Labels CSV {path}, line {line}: {len(cells)} fields, but the header has {len(columns)} "
                f"({', '.join(columns)}). Fix or remove that line (a stray delimiter or an unquoted "
                f"{_delimiter_name(delimiter)} inside a value?)."
            )
        rows.append(dict(zip(columns, cells)))
        line_numbers.append(line)
    return LabelTable(
        path=path,
        format=table_format,
        id_column=_choose_id_column(path, table_format, columns, id_column),
        columns=columns,
        rows=rows,
        line_numbers=line_numbers,
        has_header=has_header,
        delimiter=delimiter,
        encoding=encoding,
    )


def _decode(path: Path) -> tuple[str, str]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"Cannot read labels CSV {path}: {err.strerror or err}. Check --labels_csv.") from None
    if data.startswith(b"\xef\xbb\xbf"):
        return data.decode("utf-8-sig"), "utf-8-sig"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Excel on Windows saves CSVs as cp1252/Latin-1; every byte string decodes as Latin-1.
        return data.decode("latin-1"), "latin-1"


def _sniff_delimiter(lines: list[str]) -> str:
    """The delimiter that splits the first lines into the most, equally many, fields.

    `csv.Sniffer` guesses wrong on one- and two-column files, which are most label files.
    """
    sample = lines[:20]
    best, best_width = ",", 1
    for delimiter in _DELIMITERS:
        widths = {len(row) for row in csv.reader(sample, delimiter=delimiter)}
        if len(widths) == 1 and (width := widths.pop()) > best_width:
            best, best_width = delimiter, width
    return best


def _lines(text: str) -> io.StringIO:
    """Lines split only at \n, \r, \r\n (`str.splitlines` also splits at Latin-1 \x85)."""
    return io.StringIO(text, newline="")


def _parse(text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """Non-blank records as (1-based line number, stripped cells)."""
    reader = csv.reader(_lines(text), delimiter=delimiter)
    return [(reader.line_num, [cell.strip() for cell in cells]) for cells in reader if any(c.strip() for c in cells)]


def _looks_like_data(first_row: list[str]) -> bool:
    """A first row is data, not a header, when its first cell is an image id or file name."""
    return bool(_ISIC_ID.match(first_row[0])) or is_image_file(Path(first_row[0]))


def _format_from_header(columns: list[str]) -> CsvFormat:
    names = set(columns)
    if columns == ["image_name"]:
        return CsvFormat.IMAGE_LIST
    if {"image_id", "melanoma", "seborrheic_keratosis"} <= names:
        return CsvFormat.ISIC2017
    if columns[0] == "image" and {"MEL", "NV", "BKL"} <= names:
        return CsvFormat.ISIC_ONEHOT
    if {"image_name", "patient_id", "target"} <= names:
        return CsvFormat.ISIC2020
    if {"lesion_id", "image_id", "dx"} <= names:
        return CsvFormat.HAM10000
    return CsvFormat.GENERIC


def _headerless_format(path: Path, first_row: list[str]) -> tuple[CsvFormat, list[str]]:
    if len(first_row) == 1:
        return CsvFormat.IMAGE_LIST, ["image_name"]
    if len(first_row) == 2:
        return CsvFormat.ISIC2016, list(ISIC2016_COLUMNS)
    raise UserError(
        f"Labels CSV {path} has no header line (line 1 starts with the image id {first_row[0]!r}) and "
        f"{len(first_row)} columns, which matches no known layout. Add a header line naming the columns, "
        "e.g. image_id,...; then choose the class with --label_filter COLUMN=VALUE."
    )


def _check_columns(path: Path, columns: list[str]) -> None:
    seen: set[str] = set()
    for name in columns:
        if not name:
            raise UserError(f"Labels CSV {path}: the header has an empty column name. Name every column.")
        if name in seen:
            raise UserError(f"Labels CSV {path}: the header names column {name!r} twice. Rename one of them.")
        seen.add(name)


def _choose_id_column(path: Path, table_format: CsvFormat, columns: list[str], requested: str | None) -> str:
    if requested is not None:
        if requested in columns:
            return requested
        raise UserError(
            f"Labels CSV {path} has no column {requested!r} (given with --id_column). "
            f"Its columns are: {', '.join(columns)}."
        )
    if table_format in _FORMAT_ID_COLUMN:
        return _FORMAT_ID_COLUMN[table_format]
    for name in _GENERIC_ID_COLUMNS:
        if name in columns:
            return name
    raise UserError(
        f"Labels CSV {path}: cannot tell which column holds the image ids (none of "
        f"{', '.join(_GENERIC_ID_COLUMNS)}). Its columns are: {', '.join(columns)}. "
        "Name the id column with --id_column COLUMN."
    )


def _delimiter_name(delimiter: str) -> str:
    return {",": "comma", ";": "semicolon", "\t": "tab"}[delimiter]


# ------------------------------------------------------------------------ filtering


def parse_filter(expr: str) -> tuple[str, str]:
    """Parse one `--label_filter` expression: ``"target=1"`` -> ``("target", "1")``.

    Raises:
        UserError: no ``=``, or an empty column or value.
    """
    column, sep, value = expr.partition("=")
    column, value = column.strip(), value.strip()
    if not sep or not column or not value:
        raise UserError(
            f"--label_filter {expr!r} is not COLUMN=VALUE. Write e.g. --label_filter target=1 "
            "or --label_filter dx=mel (repeat the flag to require several)."
        )
    return column, value


def filter_rows(table: LabelTable, filters: list[tuple[str, str]]) -> list[int]:
    """Indices of the rows that match every filter (no filters: every row).

    Values compare as numbers when both sides are numbers or true/false (so ``target=1``
    matches ``1.0`` and ``true``), otherwise as exact strings. In an ISIC 2016 file,
    ``label=malignant`` also matches ``1`` and ``label=benign`` matches ``0``.

    Raises:
        UserError: a filter names an unknown column, a value matches no row (the message
            lists the values that do occur), or the filters together match no row.
    """
    selected = list(range(len(table.rows)))
    for column, value in filters:
        if column not in table.columns:
            raise UserError(
                f"--label_filter {column}={value}: labels CSV {table.path} has no column {column!r}. "
                f"Its columns are: {', '.join(table.columns)}."
            )
        matching = {i for i, row in enumerate(table.rows) if _values_match(table.format, row[column], value)}
        if not matching:
            seen = sorted({row[column] for row in table.rows})
            raise UserError(
                f"--label_filter {column}={value} matches no row of labels CSV {table.path}. "
                f"Values in column {column!r}: {_first(seen)}."
            )
        selected = [i for i in selected if i in matching]
    if not selected:
        described = " and ".join(f"{c}={v}" for c, v in filters)
        raise UserError(
            f"--label_filter {described}: each matches some rows of labels CSV {table.path}, "
            "but no row matches all of them. Drop or change one filter."
        )
    return selected


def _values_match(table_format: CsvFormat, cell: str, wanted: str) -> bool:
    if table_format is CsvFormat.ISIC2016:
        cell = _ISIC2016_CLASSES.get(cell.lower(), cell)
        wanted = _ISIC2016_CLASSES.get(wanted.lower(), wanted)
    cell_number, wanted_number = as_number(cell), as_number(wanted)
    if cell_number is not None and wanted_number is not None:
        return cell_number == wanted_number
    return cell == wanted


def as_number(text: str) -> float | None:
    """A cell as a number (`1`, `1.0`, `True` -> 1.0), or None for text."""
    if _NUMBER.match(text):
        return float(text)
    return _BOOLEANS.get(text.lower())


def _first(items: list[str]) -> str:
    shown = ", ".join(repr(item) for item in items[:_MAX_LISTED])
    return shown + (f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


# ------------------------------------------------------------------------ ids -> files


# Columns that labels files written by this project add or that identify a patient.
SYNTHETIC_COLUMN = "synthetic"
GROUP_COLUMNS = ("patient_id", "lesion_id")


def id_key(image_id: str) -> str:
    """An id without folders or image extension, so `a/ISIC_1.jpg` and `ISIC_1` compare equal."""
    name = PurePosixPath(image_id.strip().replace("\\", "/"))
    return name.stem if name.suffix.lower() in IMAGE_EXTENSIONS else name.name


def find_images(folder: Path) -> dict[str, list[Path]]:
    """Index every image under `folder` (recursively) by file stem, case preserved.

    Hidden files and folders (names starting with ".": macOS "._" copies,
    .ipynb_checkpoints) are skipped. Symlinked folders are followed, each real folder
    once. Keys and path lists are sorted so the result is the same on every machine.
    """
    index: dict[str, list[Path]] = {}
    visited: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # a symlink back into a folder already indexed
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root, name)
            if not name.startswith(".") and is_image_file(path):
                index.setdefault(path.stem, []).append(path)
    return {stem: sorted(index[stem]) for stem in sorted(index)}


def resolve_ids(folder: Path, ids: list[str], index: dict[str, list[Path]] | None = None) -> Resolution:
    """Match ids from a labels file to image files under `folder`.

    An id may be a stem (``ISIC_0000001``), a file name (``ISIC_0000001.jpg``, any case
    of extension) or a path relative to `folder` (``part1/ISIC_0000001.png``). Absolute
    ids and ids with ``..`` are rejected without touching the disk. An id that matches
    several files (same stem, different folders or extensions) is ambiguous: naming the
    file more fully in the CSV resolves it. An id met again, or naming a file already
    found under another spelling, is a duplicate and used once.

    Args:
        folder: the images folder.
        ids: ids in CSV order; the order of `found` follows it.
        index: `find_images(folder)`, if already built.
    """
    index = find_images(folder) if index is None else index
    result = Resolution()
    seen_ids: set[str] = set()
    used_paths: set[Path] = set()
    for raw in ids:
        image_id = raw.strip()
        if image_id in seen_ids:
            if image_id not in result.duplicate_ids:
                result.duplicate_ids.append(image_id)
            continue
        seen_ids.add(image_id)
        reason = _unsafe_reason(image_id)
        if reason:
            result.rejected.append((image_id, reason))
            continue
        candidates = _candidates(folder, index, PurePosixPath(image_id.replace("\\", "/")))
        if not candidates:
            result.missing.append(image_id)
        elif len(candidates) > 1:
            result.ambiguous.append((image_id, candidates))
        elif candidates[0] in used_paths:
            result.duplicate_ids.append(image_id)
        else:
            used_paths.add(candidates[0])
            result.found.append((image_id, candidates[0]))
    return result


def _unsafe_reason(image_id: str) -> str | None:
    """Why an id may not be used as a name inside the images folder, or None if it may."""
    if not image_id:
        return "empty id"
    parts = PurePosixPath(image_id.replace("\\", "/"))
    if parts.is_absolute() or re.match(r"^[A-Za-z]:", image_id):
        return "absolute path; ids must be names inside the images folder"
    if ".." in parts.parts:
        return "contains '..'; ids must stay inside the images folder"
    return None


def _candidates(folder: Path, index: dict[str, list[Path]], name: PurePosixPath) -> list[Path]:
    has_extension = name.suffix.lower() in IMAGE_EXTENSIONS
    stem = name.stem if has_extension else name.name
    candidates = index.get(stem, [])
    parent = name.parent.as_posix()
    if parent != ".":
        candidates = [p for p in candidates if p.parent.relative_to(folder).as_posix() == parent]
    if has_extension:
        candidates = [p for p in candidates if p.suffix.lower() == name.suffix.lower()]
    return candidates
