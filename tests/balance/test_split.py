"""`ddpm-lesion split`: no patient in two splits, shares close to the fractions, every class
in every split where the groups allow it, determinism, the output in the input's layout,
and the errors a user meets."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from ddpm_lesion.balance.split import (
    SplitConfig,
    assign_groups,
    groups_in_several_splits,
    parse_fractions,
    split_labels,
)
from ddpm_lesion.commands.cli import main
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.labels import CsvFormat, read_labels

ISIC2020_HEADER = ("image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
                   "benign_malignant,target")


def isic2020_lines(patients: int = 60, seed: int = 0) -> list[str]:
    """Patients with 1-4 images each; about one patient in five has a melanoma (on all their images)."""
    rng = random.Random(seed)
    lines, n = [ISIC2020_HEADER], 0
    for p in range(patients):
        malignant = p % 5 == 0
        for _ in range(rng.randint(1, 4)):
            lines.append(f"ISIC_{n:07d},IP_{p:07d},female,55.0,torso,{'melanoma' if malignant else 'nevus'},"
                         f"{'malignant' if malignant else 'benign'},{int(malignant)}")
            n += 1
    return lines


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def split(source: Path, out: Path, **options) -> object:
    return split_labels(SplitConfig(labels_csv=source, output_csv=out, **options))


def test_isic2020_split_by_patient(tmp_path):
    source = write(tmp_path / "in.csv", isic2020_lines())
    report = split(source, tmp_path / "out.csv")
    table, written = read_labels(source), read_labels(tmp_path / "out.csv")
    assert (written.format, written.id_column) == (CsvFormat.ISIC2020, "image_name")
    assert written.columns == table.columns + ["split"]
    assert [{k: r[k] for k in table.columns} for r in written.rows] == table.rows
    assert groups_in_several_splits(written, "patient_id", "split") == {}
    n = len(table.rows)
    shares = Counter(r["split"] for r in written.rows)
    assert abs(shares["train"] / n - 0.7) < 0.05 and abs(shares["val"] / n - 0.15) < 0.05
    for name in ("train", "val", "test"):  # 12 melanoma patients: every split gets some
        assert report.rows[name]["1"] > 0
    assert report.group_column == "patient_id" and report.class_columns == "target"
    assert sum(report.groups.values()) == 60


def test_same_seed_same_split_whatever_the_row_order(tmp_path):
    lines = isic2020_lines()
    shuffled = [lines[0]] + random.Random(1).sample(lines[1:], len(lines) - 1)
    for name, body in (("a", lines), ("b", shuffled)):
        split(write(tmp_path / f"{name}.csv", body), tmp_path / f"{name}-out.csv", seed=3)
    by_id = [{r["image_name"]: r["split"] for r in read_labels(tmp_path / f"{n}-out.csv").rows} for n in ("a", "b")]
    assert by_id[0] == by_id[1]
    split(tmp_path / "a.csv", tmp_path / "c-out.csv", seed=4)
    assert {r["image_name"]: r["split"] for r in read_labels(tmp_path / "c-out.csv").rows} != by_id[0]


def test_ham10000_groups_by_lesion(tmp_path):
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"] + [
        f"HAM_{i // 3:07d},ISIC_{i:07d},{'mel' if i // 3 % 4 == 0 else 'nv'},histo,50.0,male,back" for i in range(60)]
    report = split(write(tmp_path / "ham.csv", lines), tmp_path / "out.csv", fractions="0.5,0.5")
    assert report.rows["train"].total() == report.rows["test"].total() == 30
    written = read_labels(tmp_path / "out.csv")
    assert report.group_column == "lesion_id" and report.names == ["train", "test"]
    assert groups_in_several_splits(written, "lesion_id", "split") == {}
    # 5 mel and 15 nv lesions of 3 images: the closest whole-lesion halves are 2 + 8 and 3 + 7 lesions.
    assert sorted((c["mel"], c["nv"]) for c in report.rows.values()) == [(6, 24), (9, 21)]


def test_assignment_by_hand():
    """Three patients of 2 images and one of 1, all one class, 50/50 (3.5 each). The big ones
    go first: to split 0 (a tie: both gain 10), to 1 (gains 10 against 2), to 0 (a tie at 2);
    the single image then narrows split 1's gap (-2) and would widen split 0's (+2)."""
    groups = {"a": Counter(x=2), "b": Counter(x=2), "c": Counter(x=2), "d": Counter(x=1)}
    placed = assign_groups(groups, [0.5, 0.5], seed=0)
    assert Counter(placed[g] for g in "abc") == {0: 2, 1: 1} and placed["d"] == 1
    assert assign_groups(groups, [1.0, 0.0], seed=0) == dict.fromkeys(groups, 0)  # an empty split gets nothing


def test_rounding_does_not_always_favour_the_same_split():
    """Ten images of each of two classes, 50/25/25: each class alone would round 2.5 + 2.5 to
    3 + 2 with the tie going to val both times; the size term sends one class's extra to test."""
    groups = {f"{c}{i}": Counter({c: 1}) for c in "xy" for i in range(10)}
    placed = assign_groups(groups, [0.5, 0.25, 0.25], seed=0)
    assert Counter(placed.values()) == {0: 10, 1: 5, 2: 5}
    assert Counter((g[0], s) for g, s in placed.items() if s == 0) == {("x", 0): 5, ("y", 0): 5}


def test_coarse_groups_still_fill_every_split():
    """Three patients of two images, one with melanoma, thirds: one patient per split. (By
    classes alone, train would take the melanoma patient and a benign one, leaving test empty.)"""
    groups = {"benign-1": Counter({"0": 2}), "benign-2": Counter({"0": 2}), "melanoma": Counter({"1": 2})}
    assert sorted(assign_groups(groups, [0.34, 0.33, 0.33], seed=0).values()) == [0, 1, 2]


def test_no_patient_column_is_refused_unless_the_id_column_is_named(tmp_path, capsys):
    source = write(tmp_path / "2019.csv", ["image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"] + [
        f"ISIC_{i:07d},{int(i % 2 == 0)}.0,{int(i % 2 == 1)}.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0" for i in range(20)])
    with pytest.raises(UserError, match="no patient_id or lesion_id column.*--group_column image"):
        split(source, tmp_path / "out.csv")
    assert main(["split", "--labels_csv", str(source), "--output_csv", str(tmp_path / "out.csv"),
                 "--group_column", "image", "--fractions", "0.5,0.25,0.25"]) == 0
    printed = capsys.readouterr().out
    assert "stratified by MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK" in printed
    assert "checked: no image value appears in two splits" in printed
    rows = read_labels(tmp_path / "out.csv").rows
    assert Counter(r["split"] for r in rows) == {"train": 10, "val": 5, "test": 5}
    assert Counter(r["split"] for r in rows if r["MEL"] == "1.0")["train"] == 5


@pytest.mark.parametrize("fractions, names, message", [
    ("0.7,0.2", None, "add up to 1"),
    ("0.7,abc,0.3", None, "give numbers"),
    ("0.25,0.25,0.25,0.25", None, "name the splits with --split_names"),
    ("0.5,0.5", "train,train", "different, non-empty names"),
])
def test_fraction_errors(fractions, names, message):
    with pytest.raises(UserError, match=message):
        parse_fractions(fractions, names)


def test_input_errors(tmp_path):
    isic2016 = write(tmp_path / "2016.csv", ["ISIC_0000000,benign", "ISIC_0000001,malignant"])
    with pytest.raises(UserError, match="no header line"):
        split(isic2016, tmp_path / "out.csv")
    already = write(tmp_path / "split.csv", [ISIC2020_HEADER + ",split", "ISIC_1,IP_1,male,45,torso,nevus,benign,0,x"])
    with pytest.raises(UserError, match="already has a column 'split'"):
        split(already, tmp_path / "out.csv")
    with pytest.raises(UserError, match="is the input file"):
        split(already, already)
