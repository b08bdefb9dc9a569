"""Read wandb's own offline run directories back, for tests: the records in
`offline-run-*/run-*.wandb` (the transaction log `wandb sync` uploads) and the table files
the run wrote. wandb 0.31 no longer ships a Python reader for the log (its Go core writes
it), so this decodes the format itself: a 7-byte header (":W&B", magic 0xBEE1, version 0),
then LevelDB-log framing (32 KiB blocks; each chunk = crc32c u32, length u16, type u8 with
1 full, 2 first, 3 middle, 4 last) around serialized `wandb_internal_pb2.Record`s.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

_BLOCK = 32768
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    records, pos, pending = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk, pos = data[pos + _HEADER:pos + _HEADER + length], pos + _HEADER + length
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@dataclass
class OfflineRun:
    """What one offline run recorded."""

    folder: Path
    project: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    started: float = 0.0
    config: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)  # ArtifactRecord, in order
    history: list[dict] = field(default_factory=list)  # one dict per logged row (top-level keys, JSON values)
    summary: dict = field(default_factory=dict)
    finished: bool = False  # the exit record is in the log

    def logged(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]

    def table(self, key: str) -> dict:
        """The last table logged under `key`, as written in the run's files: columns and data."""
        (*_, ref) = self.logged(key)
        assert ref["_type"] == "table-file", ref
        return json.loads((self.folder / "files" / ref["path"]).read_text(encoding="utf-8"))

    def made(self, kind: str) -> list:
        """Artifacts this run logged as outputs."""
        return [a for a in self.artifacts if a.type == kind and not a.use_after_commit]

    def used(self, kind: str) -> list:
        """Artifacts this run declared as inputs."""
        return [a for a in self.artifacts if a.type == kind and a.use_after_commit]


def _nested(items) -> dict:
    row: dict = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        target = row
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = json.loads(item.value_json)
    return row


def read_run(folder: Path) -> OfflineRun:
    (log,) = Path(folder).glob("run-*.wandb")
    run = OfflineRun(Path(folder))
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.project, run.group, run.job_type, run.name = r.project, r.run_group, r.job_type, r.display_name
            run.started = r.start_time.seconds + r.start_time.nanos / 1e9
            run.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            run.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "history":
            run.history.append(_nested(record.history.item))
        elif kind == "summary":
            run.summary.update({u.key: json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            run.finished = True
    return run


def read_finished_run(folder: Path, timeout: float = 60.0) -> OfflineRun:
    """`read_run` once the run's exit record is on disk: wandb's service process may still be
    writing the log for a moment after `finish()` returns."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_run(folder)
        if run.finished or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def offline_runs(wandb_dir: Path) -> list[OfflineRun]:
    """Every offline run under a wandb directory (or its sub-folders), oldest first."""
    return sorted((read_finished_run(folder) for folder in Path(wandb_dir).rglob("offline-run-*")), key=lambda r: r.started)
