"""Writing a labels table back in its own layout, with the tool's columns added at the end.

The CSVs `ddpm-lesion balance` and `ddpm-lesion split` write are read again by every other
tool (training's `--label_filter`, `utility`'s default melanoma column, the user's own
scripts), so they must read back exactly as the input did: same layout, header and column
order, delimiter, encoding (a BOM stays a BOM, Latin-1 stays Latin-1) and line endings. Cells
are written as `labels.read_labels` read them (stripped of surrounding spaces), which keeps
every id and label the same.

A header-less file (ISIC 2016, a bare list of ids) cannot carry a named extra column, and
inventing a header would change its layout, so such files are refused with the fix.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import write_bytes_atomic
from ddpm_lesion.data.labels import LabelTable


def check_can_add_columns(table: LabelTable, added: list[str]) -> None:
    """Refuse a table the added columns cannot be written to.

    Raises:
        UserError: the file has no header line, or already has one of `added` (it is
            probably an output of this tool, and a second pass would mix two runs' rows).
    """
    if not table.has_header:
        names = table.delimiter.join(table.columns)
        raise UserError(
            f"Labels CSV {table.path} has no header line ({table.format.value} layout), so the columns "
            f"{', '.join(added)} cannot be added to it. Add the header line {names!r} as line 1 (the names "
            "ddpm-lesion reads it with) and rerun; the file then keeps its rows and gains named columns.")
    present = [name for name in added if name in table.columns]
    if present:
        raise UserError(
            f"Labels CSV {table.path} already has a column {present[0]!r}: it looks like an output of ddpm-lesion. "
            "Give the original labels file instead (or rename that column).")


def write_labels(table: LabelTable, path: Path, rows: Iterable[Mapping[str, str]], added: list[str]) -> None:
    """Write `rows` (dicts over `table.columns + added`) to `path` in the layout of `table`, atomically."""
    check_can_add_columns(table, added)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*table.columns, *added], delimiter=table.delimiter,
                            lineterminator=line_ending(table.path), extrasaction="raise")
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    try:
        data = text.encode(table.encoding)
    except UnicodeEncodeError as err:
        raise UserError(f"cannot write {path} in the input's encoding {table.encoding}: {err}. Convert "
                        f"{table.path} to UTF-8 and rerun.") from None
    write_bytes_atomic(path, data)


def line_ending(path: Path) -> str:
    """The line ending of the file's first line: Windows tools write \\r\\n, the rest \\n."""
    with open(path, "rb") as handle:
        first = handle.readline()
    return "\r\n" if first.endswith(b"\r\n") else "\n"
