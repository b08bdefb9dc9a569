"""What `ddpm-lesion balance` will make: each row's class, and how many synthetic images of
each class bring the training split to the target. Pure functions of the labels table.

Classes per layout (`--label_column` overrides):

- HAM10000: the `dx` column (akiec, bcc, bkl, df, mel, nv, vasc);
- ISIC 2020: the `target` column (0, 1); its `benign_malignant` twin is filled in too;
- ISIC 2018/2019 one-hot (`MEL,NV,...`): the column holding 1. A column no training row
  holds 1 in (ISIC 2019's `UNK`) is not a class;
- ISIC 2017 (`melanoma`, `seborrheic_keratosis`): the column holding 1, and `nevus` when
  neither does -- the challenge's third class is benign nevus, encoded as 0, 0;
- other CSVs: `--label_column COL` (or comma-separated one-hot columns);
- ISIC 2016 and bare id lists are refused by `label_writer` (no header to add columns to).

Counts come from the CSV rows of the training split, not from the images found: the output
CSV keeps every real row, so "balanced" is a statement about the CSV. Near-duplicates left
out of fine-tuning (`--dedupe`) still count, since they stay real rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.labels import CsvFormat, LabelTable, as_number, filter_rows
from ddpm_lesion.data.training_images import row_class

ISIC2017_COLUMNS = ("melanoma", "seborrheic_keratosis")
ISIC2017_NONE_CLASS = "nevus"
# Columns that spell the same label twice in one layout; a synthetic row gets both.
_TWINS = {CsvFormat.ISIC2020: ("target", "benign_malignant")}
_DEFAULT_COLUMN = {CsvFormat.HAM10000: "dx", CsvFormat.ISIC2020: "target"}


@dataclass(frozen=True)
class ClassScheme:
    """How a row's class is read: one column's value, or which of several one-hot columns holds 1."""

    columns: tuple[str, ...]
    none_class: str | None = None  # one-hot only: the class of a row with no 1 (ISIC 2017's nevus)
    twins: tuple[str, ...] = ()  # other columns spelling the same label (ISIC 2020 benign_malignant)

    @property
    def one_hot(self) -> bool:
        return len(self.columns) > 1

    @property
    def described(self) -> str:
        return ",".join(self.columns) + (f" (none of them: {self.none_class})" if self.none_class else "")


def class_scheme(table: LabelTable, label_column: str | None) -> ClassScheme:
    """The class columns: `label_column` (one column, or comma-separated one-hot columns), or the layout's.

    Raises:
        UserError: a named column does not exist, or the layout has no class column and none was given.
    """
    if label_column is not None:
        columns = tuple(c.strip() for c in label_column.split(",") if c.strip())
        unknown = [c for c in columns if c not in table.columns]
        if not columns or unknown:
            raise UserError(f"--label_column {label_column!r}: labels CSV {table.path} has no column "
                            f"{(unknown or [label_column])[0]!r}. Its columns are: {', '.join(table.columns)}.")
    else:
        columns = layout_class_columns(table)
    if columns is None:
        raise UserError(f"Labels CSV {table.path} ({table.format.value} layout) has no known class column. Name it "
                        f"with --label_column COL, or --label_column A,B,C for one-hot columns. Its columns are: "
                        f"{', '.join(table.columns)}.")
    isic2017 = table.format is CsvFormat.ISIC2017 and set(columns) == set(ISIC2017_COLUMNS)
    pair = _TWINS.get(table.format, ())
    twins = tuple(c for c in pair if c != columns[0] and c in table.columns) if columns[0] in pair else ()
    return ClassScheme(columns, ISIC2017_NONE_CLASS if isic2017 else None, twins if len(columns) == 1 else ())


def layout_class_columns(table: LabelTable) -> tuple[str, ...] | None:
    """The class column(s) of the table's layout, or None for a layout without one."""
    if table.format in _DEFAULT_COLUMN:
        return (_DEFAULT_COLUMN[table.format],)
    if table.format is CsvFormat.ISIC2017:
        return ISIC2017_COLUMNS
    if table.format is CsvFormat.ISIC_ONEHOT:
        return tuple(c for c in table.columns if c != table.id_column)
    return None


def row_label(table: LabelTable, scheme: ClassScheme, row: int) -> str:
    """The class of one row (see the module docstring). Raises `UserError` naming the line
    when a one-hot row holds 1 in no column (and there is no none-class) or in several."""
    if scheme.none_class is not None and not any(as_number(table.rows[row][c]) == 1.0 for c in scheme.columns):
        return scheme.none_class
    label = row_class(table, row, ",".join(scheme.columns))
    if not label:
        raise UserError(f"{table.path} line {table.line_numbers[row]}: the class column {scheme.columns[0]!r} is "
                        "empty. Fill it in or remove the row.")
    return label


def training_rows(table: LabelTable, split_column: str | None, train_value: str) -> list[int]:
    """The rows of the training split (every row without a split column). Values compare as
    `--label_filter` compares them (`1` matches `1.0`)."""
    if split_column is None:
        return list(range(len(table.rows)))
    if split_column not in table.columns:
        raise UserError(f"--split_column {split_column}: labels CSV {table.path} has no such column. Its columns "
                        f"are: {', '.join(table.columns)}. (`ddpm-lesion split` adds a patient-level one.)")
    try:
        return filter_rows(table, [(split_column, train_value)])
    except UserError:
        seen = sorted({row[split_column] for row in table.rows})
        raise UserError(f"--train_value {train_value}: no row of labels CSV {table.path} has {split_column}="
                        f"{train_value}; the values there are {', '.join(map(repr, seen))}.") from None


def synthetic_counts(real: Mapping[str, int], target: str) -> dict[str, int]:
    """Synthetic images per class so that real + synthetic reaches `target`, in the order of `real`.

    `majority`: every class up to the largest class. `N`: every class up to N. `CLASS=N,...`:
    the named classes up to N, the others none. A class already at or above its target gets
    none: balancing adds images, it never removes real ones.

    Raises:
        UserError: unreadable target, a negative count, or a class that has no training row.
    """
    text = target.strip()
    if text == "majority":
        goal = dict.fromkeys(real, max(real.values(), default=0))
    elif text.isdigit():
        goal = dict.fromkeys(real, int(text))
    else:
        goal = dict.fromkeys(real, 0)
        for part in text.split(","):
            name, sep, count = part.strip().rpartition("=")
            if not sep or not name or not count.strip().isdigit():
                raise UserError(f"--target {target!r}: expected majority, a number N, or CLASS=N pairs separated by "
                                "commas (e.g. mel=2000,df=1000).")
            if name not in real:
                raise UserError(f"--target {target!r}: the training split has no class {name!r}; its classes are "
                                f"{', '.join(real)}.")
            goal[name] = int(count)
    return {name: max(0, goal[name] - count) for name, count in real.items()}


def class_cells(table: LabelTable, scheme: ClassScheme, rows: list[int], labels: list[str],
                name: str) -> dict[str, str]:
    """The class cells of a synthetic row of class `name`, in the input's own spelling.

    One-hot columns get the input's text for 1 and 0 (`1.0`/`0.0` in ISIC 2019). A twin
    column gets the value every real row of the class has in it (empty if they disagree).
    """
    if scheme.one_hot:
        hot, cold = _one_hot_texts(table, scheme, rows)
        return {c: hot if c == name else cold for c in scheme.columns}
    cells = {scheme.columns[0]: name}
    for twin in scheme.twins:
        seen = {table.rows[r][twin] for r, label in zip(rows, labels) if label == name}
        cells[twin] = seen.pop() if len(seen) == 1 else ""
    return cells


def _one_hot_texts(table: LabelTable, scheme: ClassScheme, rows: list[int]) -> tuple[str, str]:
    """The most common spellings of 1 and of 0 in the one-hot columns ("1.0" and "0.0" by default)."""
    spelled: dict[float, Counter[str]] = {1.0: Counter(), 0.0: Counter()}
    for r in rows:
        for c in scheme.columns:
            cell = table.rows[r][c]
            if as_number(cell) in spelled:
                spelled[as_number(cell)][cell] += 1
    hot, cold = (spelled[v].most_common(1)[0][0] if spelled[v] else f"{v:.1f}" for v in (1.0, 0.0))
    return hot, cold


def slug(name: str) -> str:
    """A class name as a file-name part (`[A-Za-z0-9._-]`), e.g. for `generated/<slug>/`. A
    name that had to change gets a short hash so two classes never share a folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")
    if cleaned == name:
        return name
    return f"{cleaned or 'class'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


# ------------------------------------------------------------------------ the plan


@dataclass
class ClassPlan:
    name: str
    real: int
    synthetic: int

    @property
    def slug(self) -> str:
        return slug(self.name)


@dataclass
class Duplicate:
    """A training image left out of fine-tuning: a near-copy of an earlier row's image."""

    id: str
    duplicate_of: str
    distance: float


@dataclass
class BalancePlan:
    """Everything decided before any model is touched; saved as `OUT/plan.json`, and a rerun
    reuses it only when every field but the duplicates (the expensive part) comes out equal."""

    labels_csv: str
    labels_sha256: str
    layout: str
    class_columns: str
    training_split: str
    training_rows: int
    target: str
    mode: str
    dedupe_threshold: float | None
    classes: list[ClassPlan]
    duplicates: list[Duplicate] = field(default_factory=list)

    @property
    def to_generate(self) -> list[ClassPlan]:
        return [c for c in self.classes if c.synthetic > 0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BalancePlan:
        return cls(**{**data, "classes": [ClassPlan(**c) for c in data["classes"]],
                      "duplicates": [Duplicate(**d) for d in data["duplicates"]]})

    def differences(self, other: BalancePlan) -> list[str]:
        """`field: old -> new` for every field but `duplicates` that differs."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}: {mine[k]!r} -> {theirs[k]!r}" for k in mine if k != "duplicates" and mine[k] != theirs[k]]

    def to_text(self) -> str:
        width = max([len(c.name) for c in self.classes] + [5])
        lines = [f"Balance plan for {self.labels_csv} ({self.layout} layout, classes from {self.class_columns})",
                 f"  training split: {self.training_split} ({self.training_rows} rows); target: {self.target}; "
                 f"mode: {self.mode}",
                 f"  {'class':<{width}}  {'real':>7}  {'synthetic':>9}  {'total':>7}"]
        lines += [f"  {c.name:<{width}}  {c.real:>7}  {c.synthetic:>9}  {c.real + c.synthetic:>7}"
                  for c in self.classes]
        real, made = sum(c.real for c in self.classes), sum(c.synthetic for c in self.classes)
        lines.append(f"  {'total':<{width}}  {real:>7}  {made:>9}  {real + made:>7}")
        if self.dedupe_threshold is not None:
            lines.append(f"  near-duplicates left out of fine-tuning (copy distance <= {self.dedupe_threshold:g}; they "
                         f"stay real rows of the output CSV): {len(self.duplicates)}")
            lines += [f"    {d.id} (copy of {d.duplicate_of}, distance {d.distance:.2g})" for d in self.duplicates]
        return "\n".join(lines)


def count_classes(labels: list[str]) -> dict[str, int]:
    """Rows per class, classes sorted by name (the order of the plan and of `class_labels.json`)."""
    counts = Counter(labels)
    return {name: counts[name] for name in sorted(counts)}
