"""Labels CSVs in each real layout, filters, the errors a user meets, and id -> file matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.labels import (
    CsvFormat,
    filter_rows,
    find_images,
    parse_filter,
    read_labels,
    resolve_ids,
)
from tests.helpers import write_images


def write_csv(tmp_path: Path, text: str, name: str = "labels.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def selected_ids(path: Path, *filters: str, id_column: str | None = None) -> list[str]:
    table = read_labels(path, id_column=id_column)
    return table.ids(filter_rows(table, [parse_filter(f) for f in filters]))


# ------------------------------------------------------------------ formats, in their real layouts


def test_origin_image_list(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_name\nISIC_0000001\nISIC_0000002\n")
    table = read_labels(path)
    assert (table.format, table.id_column, table.has_header) == (CsvFormat.IMAGE_LIST, "image_name", True)
    assert table.ids([0, 1]) == ["ISIC_0000001", "ISIC_0000002"]
    assert table.line_numbers == [2, 3]


def test_isic2016_has_no_header_and_filters_by_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "ISIC_0000000,benign\nISIC_0000001,malignant\nISIC_0000002,benign\n")
    table = read_labels(path)
    assert table.format is CsvFormat.ISIC2016
    assert not table.has_header
    assert table.columns == ["image_id", "label"]
    assert table.line_numbers == [1, 2, 3]
    assert selected_ids(path, "label=malignant") == ["ISIC_0000001"]


def test_isic2016_test_set_numeric_labels_mean_malignant(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "ISIC_0000003,0.0\nISIC_0000012,1.0\nISIC_0000013,0.0\n")
    assert selected_ids(path, "label=1") == ["ISIC_0000012"]
    assert selected_ids(path, "label=malignant") == ["ISIC_0000012"]
    assert selected_ids(path, "label=benign") == ["ISIC_0000003", "ISIC_0000013"]


def test_isic2017(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "image_id,melanoma,seborrheic_keratosis\nISIC_0000000,0.0,0.0\nISIC_0000002,1.0,0.0\nISIC_0000007,0.0,1.0\n",
    )
    assert read_labels(path).format is CsvFormat.ISIC2017
    assert selected_ids(path, "melanoma=1") == ["ISIC_0000002"]
    assert selected_ids(path, "seborrheic_keratosis=true") == ["ISIC_0000007"]


@pytest.mark.parametrize(
    "header",
    ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC", "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"],
    ids=["2018", "2019"],
)
def test_isic_onehot(tmp_path: Path, header: str) -> None:
    width = header.count(",")
    one_hot = [",".join("1.0" if j == k else "0.0" for j in range(width)) for k in (1, 0, 1)]
    path = write_csv(tmp_path, header + "\n" + "".join(f"ISIC_{i:07d},{r}\n" for i, r in enumerate(one_hot)))
    table = read_labels(path)
    assert (table.format, table.id_column) == (CsvFormat.ISIC_ONEHOT, "image")
    assert selected_ids(path, "NV=1") == ["ISIC_0000000", "ISIC_0000002"]
    assert selected_ids(path, "MEL=1") == ["ISIC_0000001"]


def test_isic2020(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        "ISIC_2637011,IP_7279968,male,45.0,head/neck,unknown,benign,0\n"
        "ISIC_0015719,IP_3075186,female,45.0,upper extremity,melanoma,malignant,1\n"
        "ISIC_0052212,IP_2842074,female,50.0,,nevus,benign,0\n",
    )
    table = read_labels(path)
    assert (table.format, table.id_column) == (CsvFormat.ISIC2020, "image_name")
    assert table.rows[2]["anatom_site_general_challenge"] == ""
    assert selected_ids(path, "target=1") == ["ISIC_0015719"]
    assert selected_ids(path, "target=1.0") == ["ISIC_0015719"]
    assert selected_ids(path, "sex=female", "age_approx=50") == ["ISIC_0052212"]


def test_ham10000(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp\n"
        "HAM_0002730,ISIC_0026769,mel,histo,80.0,male,scalp\n"
        "HAM_0001466,ISIC_0031633,mel,histo,75.0,male,ear\n",
    )
    table = read_labels(path)
    assert (table.format, table.id_column) == (CsvFormat.HAM10000, "image_id")
    assert selected_ids(path, "dx=mel") == ["ISIC_0026769", "ISIC_0031633"]


def test_generic_csv_guesses_a_known_id_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "isic_id,diagnosis\nISIC_9000001,melanoma\nISIC_9000002,nevus\n")
    table = read_labels(path)
    assert (table.format, table.id_column) == (CsvFormat.GENERIC, "isic_id")
    assert selected_ids(path, "diagnosis=nevus") == ["ISIC_9000002"]


def test_id_column_override(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        "lesion_id,image_id,dx,dx_type,age,sex,localization\nHAM_0000118,ISIC_0027419,bkl,histo,80.0,male,scalp\n",
    )
    assert selected_ids(path, id_column="lesion_id") == ["HAM_0000118"]


# ------------------------------------------------------------------ encodings, delimiters, whitespace


def test_utf8_bom_is_removed_from_the_first_column_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_name\nISIC_0000001\n", encoding="utf-8-sig")
    table = read_labels(path)
    assert (table.encoding, table.format, table.columns) == ("utf-8-sig", CsvFormat.IMAGE_LIST, ["image_name"])


def test_latin1_fallback_is_reported(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,site\nISIC_0000001,Zürich\n", encoding="latin-1")
    table = read_labels(path)
    assert table.encoding == "latin-1"
    assert table.rows[0]["site"] == "Zürich"


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_delimiters(tmp_path: Path, delimiter: str) -> None:
    text = "image_id;dx;age\nISIC_1;mel;45,5\nISIC_2;nv;60,0\n".replace(";", delimiter)
    path = write_csv(tmp_path, text)
    table = read_labels(path)
    assert table.delimiter == delimiter
    assert table.rows[0] == {"image_id": "ISIC_1", "dx": "mel", "age": "45,5"}


def test_cells_are_stripped_and_blank_lines_skipped(tmp_path: Path) -> None:
    path = write_csv(tmp_path, " image_id , target \r\n\r\n ISIC_1 , 1 \r\nISIC_2,0\r\n")
    table = read_labels(path)
    assert table.columns == ["image_id", "target"]
    assert table.rows[0] == {"image_id": "ISIC_1", "target": "1"}
    assert table.line_numbers == [3, 4]


# ------------------------------------------------------------------ errors the user can fix


def test_empty_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "\n  \n")
    with pytest.raises(UserError, match=f"{path}.*is empty"):
        read_labels(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Cannot read labels CSV.*--labels_csv"):
        read_labels(tmp_path / "nope.csv")


def test_header_only(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_name,patient_id,target\n")
    with pytest.raises(UserError, match="has a header .* but no rows"):
        read_labels(path)


def test_unknown_id_column_lists_columns_and_suggests_flag(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "picture,dx\nimg1,mel\n")
    with pytest.raises(UserError, match=r"Its columns are: picture, dx\. Name the id column with --id_column"):
        read_labels(path)


def test_id_column_override_that_does_not_exist(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,dx\nISIC_1,mel\n")
    with pytest.raises(UserError, match=r"no column 'img' \(given with --id_column\)\. Its columns are: image_id, dx"):
        read_labels(path, id_column="img")


def test_row_with_wrong_width_names_the_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,dx\nISIC_1,mel\nISIC_2,nv,extra\n")
    with pytest.raises(UserError, match=f"{path}, line 3: 3 fields, but the header has 2"):
        read_labels(path)


def test_headerless_file_with_unknown_width(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "ISIC_1,a,b\n")
    with pytest.raises(UserError, match="no header line .* Add a header line"):
        read_labels(path)


def test_duplicate_column_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,dx,dx\nISIC_1,a,b\n")
    with pytest.raises(UserError, match="names column 'dx' twice"):
        read_labels(path)


@pytest.mark.parametrize("expr", ["target", "=1", "target=", "  "])
def test_bad_filter_syntax(expr: str) -> None:
    with pytest.raises(UserError, match="is not COLUMN=VALUE"):
        parse_filter(expr)


def test_filter_keeps_everything_after_the_first_equals() -> None:
    assert parse_filter(" dx = a=b ") == ("dx", "a=b")


def test_unknown_filter_column_lists_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,dx\nISIC_1,mel\n")
    with pytest.raises(UserError, match="no column 'target'. Its columns are: image_id, dx"):
        selected_ids(path, "target=1")


def test_filter_value_matching_nothing_lists_values_seen(tmp_path: Path) -> None:
    rows = "".join(f"ISIC_{i},class{i:02d}\n" for i in range(12))
    path = write_csv(tmp_path, "image_id,dx\n" + rows)
    with pytest.raises(UserError) as info:
        selected_ids(path, "dx=Mel")
    message = str(info.value)
    assert "dx=Mel matches no row" in message and str(path) in message
    assert "'class00', 'class01'" in message and "... and 2 more" in message
    assert "'class11'" not in message


def test_filter_values_are_case_sensitive_strings(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,dx\nISIC_1,mel\n")
    with pytest.raises(UserError, match="Values in column 'dx': 'mel'"):
        selected_ids(path, "dx=MEL")


def test_filters_that_match_separately_but_not_together(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "image_id,dx,sex\nISIC_1,mel,male\nISIC_2,nv,female\n")
    with pytest.raises(UserError, match="no row matches all of them"):
        selected_ids(path, "dx=mel", "sex=female")


# ------------------------------------------------------------------ ids -> files


def test_find_images_is_recursive_any_case_and_skips_hidden(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder, 2, size=4, prefix="A_")
    write_images(folder / "part2", 1, size=4, prefix="B_", ext=".JPG")
    write_images(folder / ".ipynb_checkpoints", 1, size=4, prefix="C_")
    write_images(folder, 1, size=4, prefix="._A_")
    (folder / "notes.txt").write_text("x")
    index = find_images(folder)
    assert list(index) == ["A_0000000", "A_0000001", "B_0000000"]
    assert index["B_0000000"] == [folder / "part2" / "B_0000000.JPG"]


def test_find_images_follows_symlinked_folders_once(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder / "real", 1, size=4)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert list(find_images(folder)) == ["ISIC_0000000"]


def test_ids_with_and_without_extension(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder, 3, size=4, ext=".JPG")
    result = resolve_ids(folder, ["ISIC_0000000", "ISIC_0000001.jpg", "ISIC_0000002.JPG", "ISIC_0000009"])
    assert [i for i, _ in result.found] == ["ISIC_0000000", "ISIC_0000001.jpg", "ISIC_0000002.JPG"]
    assert result.found[1][1] == folder / "ISIC_0000001.JPG"
    assert result.missing == ["ISIC_0000009"]


def test_ids_in_subfolders_and_relative_paths(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder / "a", 1, size=4)
    write_images(folder / "b", 1, size=4, prefix="X_")
    result = resolve_ids(folder, ["ISIC_0000000", "b/X_0000000.png", "a/X_0000000"])
    assert result.found == [
        ("ISIC_0000000", folder / "a" / "ISIC_0000000.png"),
        ("b/X_0000000.png", folder / "b" / "X_0000000.png"),
    ]
    assert result.missing == ["a/X_0000000"]


def test_same_stem_in_two_places_is_ambiguous_until_named_fully(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder / "a", 1, size=4)
    write_images(folder / "b", 1, size=4)
    result = resolve_ids(folder, ["ISIC_0000000", "b/ISIC_0000000"])
    assert result.ambiguous == [("ISIC_0000000", [folder / "a/ISIC_0000000.png", folder / "b/ISIC_0000000.png"])]
    assert result.found == [("b/ISIC_0000000", folder / "b/ISIC_0000000.png")]


def test_parent_and_absolute_ids_are_rejected_not_opened(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder, 1, size=4)
    write_images(tmp_path, 1, size=4, prefix="OUT_")  # exists, but outside the folder
    ids = ["../OUT_0000000.png", str(tmp_path / "OUT_0000000.png"), "sub/../../x", "C:\\x.png", "..\\OUT_0000000", ""]
    result = resolve_ids(folder, ids + ["ISIC_0000000"])
    assert [i for i, _ in result.rejected] == ids
    assert "'..'" in result.rejected[0][1] and "absolute" in result.rejected[1][1]
    assert result.found == [("ISIC_0000000", folder / "ISIC_0000000.png")]
    assert result.missing == []


def test_duplicates_are_listed_once_and_used_once(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder, 2, size=4)
    ids = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000000", " ISIC_0000000", "ISIC_0000001.png"]
    result = resolve_ids(folder, ids)
    assert [i for i, _ in result.found] == ["ISIC_0000000", "ISIC_0000001"]
    assert result.duplicate_ids == ["ISIC_0000000", "ISIC_0000001.png"]


def test_headerless_image_list(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "ISIC_0000001\nISIC_0000002.jpg\n")
    table = read_labels(path)
    assert (table.format, table.has_header, table.columns) == (CsvFormat.IMAGE_LIST, False, ["image_name"])
    assert table.ids([0, 1]) == ["ISIC_0000001", "ISIC_0000002.jpg"]


def test_latin1_next_line_byte_does_not_split_a_row(tmp_path: Path) -> None:
    # 0x85 is "…" in cp1252 and NEL in Latin-1; str.splitlines would break the row there.
    path = tmp_path / "labels.csv"
    path.write_bytes(b"image_id,note\nISIC_1,a\x85b\n")
    table = read_labels(path)
    assert table.rows == [{"image_id": "ISIC_1", "note": "a\x85b"}]
    assert table.line_numbers == [2]
