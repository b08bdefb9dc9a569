"""Atomic file and folder writes.

A run can be killed at any instant (pre-emption, OOM, Ctrl-C, a full disk). Everything
the tool writes goes to a temporary name in the same folder first and is renamed into
place only when complete, so a reader sees the old file or the new one, never half of
one, and "exists under its final name" always means "complete".
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"
# mkstemp creates files readable by their owner only; finished files get the usual
# permissions (0666 minus the umask), like any file the user's tools write.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temp file beside `path`, fsync it, then rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda handle: handle.write(data))


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, object]]) -> None:
    """A whole CSV (header, then `rows` by `columns`) written atomically: readers see the
    old file or the new one, never half of it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place. A previous folder of the same name is
    renamed aside first and deleted only after the new one is in place."""
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete leftovers of writes that were killed half-way; returns what was removed."""
    removed = []
    if folder.is_dir():
        for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
