"""`ddpm-lesion split`: a patient-level train/val/test split of a labels CSV.

Images of one patient share skin, camera and often the lesion itself, so a patient seen in
training and again in testing makes every score optimistic. ISIC 2020 names patients
(`patient_id`); HAM10000 names lesions (`lesion_id`: several images of one lesion; it has no
patient ids). This command keeps every group in one split, stratifies by class as far as
whole groups allow, and writes the input CSV plus a `split` column (`label_writer`: same
layout, so every other command reads it as it read the input).

Assignment, greedy as in scikit-learn's StratifiedGroupKFold: groups are placed largest
first, each in the split where it most reduces the squared gap between the split's class
counts and `fraction x class total`, every class weighted by `1 / total^2` so that a rare
class counts as much as a common one. The split's size counts as one more class (all rows),
so coarse groups cannot pile into one split while another stays empty; ties go to the first
split. The order among groups of one size comes from a hash
of (`--seed`, group name), so the split depends on the seed and the rows' contents only --
not on the CSV's row order, the platform or the numpy version.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from ddpm_lesion.balance.plan import class_scheme, layout_class_columns, row_label
from ddpm_lesion.core.config import option
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.label_writer import check_can_add_columns, write_labels
from ddpm_lesion.data.labels import GROUP_COLUMNS, LabelTable, read_labels

_DEFAULT_NAMES = {2: "train,test", 3: "train,val,test"}


@dataclasses.dataclass
class SplitConfig:
    labels_csv: Path | None = option(None, "Labels CSV to split (ISIC 2017-2020, HAM10000, or any CSV with a header).")
    output_csv: Path | None = option(None, "Where to write the input's rows plus the split column (same layout).")
    fractions: str = option("0.7,0.15,0.15", "Share of the rows in each split, comma-separated, adding up to 1.")
    split_names: str | None = option(None, "Names of the splits, comma-separated (default: train,val,test for three "
                                           "fractions, train,test for two).")
    split_column: str = option("split", "Name of the column added to the output.")
    group_column: str | None = option(None, "Column naming the patient: all its images go to one split (default: "
                                            "patient_id, else lesion_id). To split image by image, name the id column.")
    label_column: str | None = option(None, "Class column, or comma-separated one-hot columns, to stratify by "
                                            "(default: the layout's: dx, target, MEL,NV,...). None: not stratified.")
    id_column: str | None = option(None, "CSV column holding image ids (default: detected from the layout).")
    seed: int = option(0, "Seed of the order in which equally large groups are placed: same seed, same split.")


@dataclasses.dataclass
class SplitReport:
    output_csv: Path
    names: list[str]
    group_column: str
    class_columns: str | None
    rows: dict[str, Counter[str]]  # split -> class -> rows
    groups: dict[str, int]  # split -> groups
    ungrouped_rows: int  # rows with an empty group cell, each placed on its own

    def to_text(self) -> str:
        classes = sorted({c for counts in self.rows.values() for c in counts})
        total = sum(sum(c.values()) for c in self.rows.values())
        header = ["split", "rows", "share", "groups", *(classes if self.class_columns else [])]
        table = [header]
        for name in self.names:
            n = sum(self.rows[name].values())
            table.append([name, str(n), f"{n / total:.3f}", str(self.groups[name]),
                          *([str(self.rows[name][c]) for c in classes] if self.class_columns else [])])
        widths = [max(len(row[k]) for row in table) for k in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if k else cell.ljust(w) for k, (cell, w) in enumerate(zip(row, widths)))
                 for row in table]
        stratified = f"stratified by {self.class_columns}" if self.class_columns else "not stratified (no class column)"
        lines.append(f"groups: {self.group_column}; {stratified}"
                     + (f"; {self.ungrouped_rows} row(s) with an empty {self.group_column} placed one by one"
                        if self.ungrouped_rows else ""))
        lines.append(f"checked: no {self.group_column} value appears in two splits of {self.output_csv}")
        return "\n".join(lines)


def parse_fractions(fractions: str, split_names: str | None) -> tuple[list[float], list[str]]:
    """`"0.7,0.15,0.15"` -> ([0.7, 0.15, 0.15], ["train", "val", "test"]), checked."""
    try:
        values = [float(part) for part in fractions.split(",")]
    except ValueError:
        raise UserError(f"--fractions {fractions!r}: give numbers separated by commas, e.g. 0.7,0.15,0.15.") from None
    if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6 or not any(values):
        raise UserError(f"--fractions {fractions!r}: the shares must be >= 0 and add up to 1 (they add up to "
                        f"{sum(values):g}).")
    names_text = split_names if split_names is not None else _DEFAULT_NAMES.get(len(values))
    if names_text is None:
        raise UserError(f"--fractions has {len(values)} shares: name the splits with --split_names A,B,...")
    names = [n.strip() for n in names_text.split(",")]
    if len(names) != len(values) or len(set(names)) != len(names) or not all(names):
        raise UserError(f"--split_names {names_text!r}: give {len(values)} different, non-empty names, one per "
                        f"share of --fractions {fractions}.")
    return values, names


def find_group_column(table: LabelTable, requested: str | None) -> str | None:
    """`requested` (checked), else the first of patient_id, lesion_id the table has, else None."""
    if requested is not None:
        if requested not in table.columns:
            raise UserError(f"--group_column {requested}: labels CSV {table.path} has no such column. Its columns "
                            f"are: {', '.join(table.columns)}.")
        return requested
    return next((c for c in GROUP_COLUMNS if c in table.columns), None)


def groups_in_several_splits(table: LabelTable, group_column: str, split_column: str) -> dict[str, list[str]]:
    """Group value -> the splits it occurs in, for every non-empty group found in more than one."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for row in table.rows:
        if row[group_column]:
            splits_of[row[group_column]].add(row[split_column])
    return {group: sorted(splits) for group, splits in sorted(splits_of.items()) if len(splits) > 1}


def assign_groups(groups: Mapping[str, Counter[str]], fractions: Sequence[float], seed: int) -> dict[str, int]:
    """Group -> split index (see the module docstring). `groups` maps each group to its rows per class."""
    classes = sorted({c for counts in groups.values() for c in counts})
    total = {c: sum(counts[c] for counts in groups.values()) for c in classes}
    rows = sum(total.values())
    have = [Counter() for _ in fractions]
    open_splits = [s for s, share in enumerate(fractions) if share > 0]

    def cost(split: int, counts: Counter[str]) -> tuple[float, int]:
        """How much placing `counts` in `split` widens (+) or narrows (-) the weighted squared
        gaps of its classes and of its size; then the split's index."""
        gaps = [(have[split][c] - fractions[split] * total[c], counts[c], total[c]) for c in counts]
        gaps.append((have[split].total() - fractions[split] * rows, counts.total(), rows))
        return sum(((gap + n) ** 2 - gap ** 2) / t ** 2 for gap, n, t in gaps), split

    order = sorted(groups, key=lambda g: (-groups[g].total(), hashlib.sha256(f"{seed}:{g}".encode()).digest()))
    assignment = {}
    for group in order:
        best = min(open_splits, key=lambda s: cost(s, groups[group]))
        have[best].update(groups[group])
        assignment[group] = best
    return assignment


def split_labels(cfg: SplitConfig) -> SplitReport:
    """Split `cfg.labels_csv` by groups, write `cfg.output_csv`, read it back and check it."""
    if cfg.labels_csv is None or cfg.output_csv is None:
        raise UserError("--labels_csv and --output_csv are required.")
    if Path(cfg.output_csv).resolve() == Path(cfg.labels_csv).resolve():
        raise UserError(f"--output_csv {cfg.output_csv} is the input file; write the split to a new file.")
    fractions, names = parse_fractions(cfg.fractions, cfg.split_names)
    table = read_labels(Path(cfg.labels_csv), cfg.id_column)
    check_can_add_columns(table, [cfg.split_column])
    group_column = find_group_column(table, cfg.group_column)
    if group_column is None:
        raise UserError(f"Labels CSV {table.path} has no {' or '.join(GROUP_COLUMNS)} column, so images of one patient "
                        "could land in two splits. Name the patient column with --group_column COL (e.g. from the "
                        "dataset's metadata file). Only if every patient has a single image, split image by image "
                        f"with --group_column {table.id_column}.")
    scheme = class_scheme(table, cfg.label_column) if cfg.label_column or layout_class_columns(table) else None
    labels = [row_label(table, scheme, i) if scheme else "" for i in range(len(table.rows))]
    # A row with no group value is a group of its own; "\0" keeps these keys apart from real values.
    keys = [row[group_column] or f"\0{i}" for i, row in enumerate(table.rows)]
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    for key, label in zip(keys, labels):
        groups[key][label] += 1
    assignment = assign_groups(groups, fractions, cfg.seed)
    row_splits = [names[assignment[key]] for key in keys]
    write_labels(table, Path(cfg.output_csv),
                 ({**row, cfg.split_column: split} for row, split in zip(table.rows, row_splits)), [cfg.split_column])

    written = read_labels(Path(cfg.output_csv), cfg.id_column)
    crossing = groups_in_several_splits(written, group_column, cfg.split_column)
    if crossing or [row[cfg.split_column] for row in written.rows] != row_splits:
        raise RuntimeError(f"{cfg.output_csv} does not read back as written (groups in several splits: "
                           f"{list(crossing)[:5]}); please report this bug.")
    rows = {name: Counter() for name in names}
    group_sets: dict[str, set[str]] = {name: set() for name in names}
    for key, label, split in zip(keys, labels, row_splits):
        rows[split][label] += 1
        group_sets[split].add(key)
    return SplitReport(Path(cfg.output_csv), names, group_column, scheme.described if scheme else None, rows,
                       {name: len(keys_) for name, keys_ in group_sets.items()}, sum(k.startswith("\0") for k in keys))


# ------------------------------------------------------------------------ command line
