"""From folder/CSV or a local dataset to the cached uint8 tensor and its report."""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data import training_images as data
from ddpm_lesion.data.image_decoding import open_rgb, resize_and_crop
from ddpm_lesion.data.training_images import DataReport, load_training_images
from tests.data_fixtures import solid_rgb, text_as_jpeg, truncated_jpeg, zero_byte
from tests.helpers import write_images

R = 16
COLOURS = {"ISIC_0000001": (200, 30, 30), "ISIC_0000002": (30, 200, 30), "ISIC_0000003": (30, 30, 200)}


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, Path]:
    """An ISIC 2020-style CSV over a folder with good, missing, corrupt, duplicate, grey and tiny images."""
    folder = tmp_path / "images"
    for image_id, colour in COLOURS.items():
        solid_rgb(folder / f"{image_id}.jpg", colour, size=(32, 24))
    (folder / "sub").mkdir()
    Image.new("L", (24, 24), 90).save(folder / "sub" / "ISIC_0000004.png")
    solid_rgb(folder / "ISIC_0000005.png", (120, 60, 10), size=(6, 6))  # tiny: upscaled
    truncated_jpeg(folder / "ISIC_0000006.jpg")
    solid_rgb(folder / "ISIC_0000099.jpg", (1, 1, 1))  # not selected by the filter
    rows = [
        ("ISIC_0000001", 1),
        ("ISIC_0000002", 1),
        ("ISIC_0000404", 1),  # missing
        ("ISIC_0000006", 1),  # corrupt
        ("ISIC_0000001", 1),  # duplicate
        ("ISIC_0000004", 1),  # grayscale, in a sub-folder
        ("ISIC_0000005", 1),  # tiny
        ("../ISIC_0000003", 1),  # outside the folder
        ("ISIC_0000003", 1),
        ("ISIC_0000099", 0),
    ]
    csv = tmp_path / "train.csv"
    csv.write_text(
        "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target\n"
        + "".join(f"{i},IP_1,male,50.0,torso,x,{'malignant' if t else 'benign'},{t}\n" for i, t in rows)
    )
    return folder, csv


def load(
    folder: Path | None,
    csv: Path | None,
    tmp_path: Path,
    filters: list[tuple[str, str]] | None = None,
    resolution: int = R,
    **kwargs: object,
) -> tuple[torch.Tensor, DataReport, list[str]]:
    """`load_training_images` with the test's cache folder and no --id_column."""
    return load_training_images(folder, csv, filters or [], None, resolution, cache_dir=tmp_path / "cache", **kwargs)[:3]


class CountingOpen:
    """Stands in for `open_rgb` to count decodes."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return open_rgb(*args, **kwargs)


# ------------------------------------------------------------------ end to end


def test_folder_and_csv_end_to_end(mixed: tuple[Path, Path], tmp_path: Path) -> None:
    folder, csv = mixed
    tensor, report, names = load(folder, csv, tmp_path, [("target", "1")])

    assert (report.rows, report.found, report.used) == (9, 6, 5)
    assert report.missing == ["ISIC_0000404"]
    assert report.duplicates == ["ISIC_0000001"]
    assert [i for i, _ in report.rejected] == ["../ISIC_0000003"]
    assert [n for n, _ in report.corrupt] == ["ISIC_0000006.jpg"]
    assert report.converted == [("sub/ISIC_0000004.png", "L")]
    assert report.upscaled == ["ISIC_0000005.png"]
    assert "9 of 10 rows kept (target=1)" in report.notes[0]

    assert tensor.dtype == torch.uint8 and tensor.shape == (5, 3, R, R)
    assert names == [
        "ISIC_0000001.jpg", "ISIC_0000002.jpg", "sub/ISIC_0000004.png", "ISIC_0000005.png", "ISIC_0000003.jpg"
    ]
    for image, name in zip(tensor, names):
        expected = np.asarray(resize_and_crop(open_rgb(folder / name)[0], R)).transpose(2, 0, 1)
        assert np.array_equal(image.numpy(), expected), name
        assert image.float().mean() > 10, f"{name} came out black"
    # Solid colours survive resizing (JPEG may move them by a few levels).
    assert (tensor[0].int() - torch.tensor(COLOURS["ISIC_0000001"]).view(3, 1, 1)).abs().max() <= 3
    assert (tensor[2] == 90).all()


def test_report_text_and_dict(mixed: tuple[Path, Path], tmp_path: Path) -> None:
    folder, csv = mixed
    _, report, _ = load(folder, csv, tmp_path, [("target", "1")])
    text = report.to_text()
    assert "9 rows, 6 found, 5 used" in text
    assert "missing (no image file for these ids): 1\n    ISIC_0000404" in text
    assert "ISIC_0000006.jpg: truncated or corrupt" in text
    assert "sub/ISIC_0000004.png (was L)" in text
    as_dict = report.to_dict()
    assert as_dict["used"] == 5 and as_dict["upscaled"] == ["ISIC_0000005.png"]


def test_report_lists_are_truncated() -> None:
    report = DataReport(source="s", rows=30, found=5, missing=[f"id{i}" for i in range(25)], used=5)
    text = report.to_text()
    assert "missing (no image file for these ids): 25" in text
    assert "id9" in text and "id10" not in text
    assert "... and 15 more" in text


def test_folder_without_csv_uses_every_image_recursively(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_images(folder / "b", 2, size=20, prefix="B_")
    write_images(folder / "a", 1, size=20, prefix="Z_", ext=".JPG")
    text_as_jpeg(folder / "a" / "page.jpg")
    zero_byte(folder / "empty.png")
    tensor, report, names = load(folder, None, tmp_path)
    assert names == ["a/Z_0000000.JPG", "b/B_0000000.png", "b/B_0000001.png"]
    assert (report.rows, report.found, report.used) == (5, 5, 3)
    assert sorted(report.corrupt) == [
        ("a/page.jpg", "not an image (cannot identify format)"),
        ("empty.png", "zero-byte file"),
    ]
    assert tensor.shape == (3, 3, R, R)


def test_resize_and_crop_keeps_the_centre() -> None:
    # 64x32 with three vertical bands; shorter side -> 16 gives 32x16, whose centre 16 columns are green.
    bands = np.zeros((32, 64, 3), dtype=np.uint8)
    bands[:, :16] = (255, 0, 0)
    bands[:, 16:48] = (0, 255, 0)
    bands[:, 48:] = (0, 0, 255)
    out = np.asarray(resize_and_crop(Image.fromarray(bands), 16))
    assert out.shape == (16, 16, 3)
    assert np.abs(out[:, 3:13].astype(int) - (0, 255, 0)).max() <= 1
    assert out[..., 0].max() < 20 and out[..., 2].max() < 20  # only Lanczos ringing of the side bands


# ------------------------------------------------------------------ cache


def test_second_call_reads_the_cache(mixed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, csv = mixed
    first, _, first_names = load(folder, csv, tmp_path, [("target", "1")])
    counter = CountingOpen()
    monkeypatch.setattr(data, "open_rgb", counter)
    again, report, names = load(folder, csv, tmp_path, [("target", "1")])
    assert counter.calls == 0
    assert torch.equal(first, again) and names == first_names
    assert report.corrupt and report.converted and report.upscaled  # the report comes back from the cache too


@pytest.mark.parametrize("change", ["file", "resolution", "file_list"])
def test_cache_key_changes_with_files_and_resolution(
    mixed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    folder, csv = mixed
    load(folder, csv, tmp_path, [("target", "1")])
    counter = CountingOpen()
    monkeypatch.setattr(data, "open_rgb", counter)
    resolution, filters = R, [("target", "1")]
    if change == "file":
        path = folder / "ISIC_0000002.jpg"
        solid_rgb(path, (0, 0, 0), size=(32, 24))
        os.utime(path, ns=(1, 1))
    elif change == "resolution":
        resolution = 8
    else:
        filters = []  # adds ISIC_0000099
    tensor, _, names = load(folder, csv, tmp_path, filters, resolution=resolution)
    assert counter.calls == len(names) + 1  # every found file decoded again, the corrupt one included
    assert tensor.shape[-1] == resolution


# ------------------------------------------------------------------ errors


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--train_data_dir .*nope does not exist"):
        load(tmp_path / "nope", None, tmp_path)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="contains no images"):
        load(tmp_path / "images", None, tmp_path)


def test_no_csv_row_found_names_the_ids_and_the_fix(image_dir: Path, tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("image_name\n" + "".join(f"OTHER_{i}\n" for i in range(12)))
    with pytest.raises(UserError) as info:
        load(image_dir, csv, tmp_path)
    message = str(info.value)
    assert f"0 of 12 rows of {csv} were found in {image_dir}" in message
    assert "first missing ids: OTHER_0, OTHER_1" in message and "--train_data_dir" in message


def test_all_images_unreadable(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    truncated_jpeg(folder / "a.jpg")
    zero_byte(folder / "b.png")
    with pytest.raises(UserError, match="all 2 images found in .* are unreadable; first unreadable: a.jpg"):
        load(folder, None, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"folder": None}, "give --train_data_dir"),
        ({"dataset_name": "x/y"}, "either --train_data_dir or --dataset_name"),
        ({"filters": [("target", "1")]}, "give --labels_csv too"),
        ({"resolution": 0}, "--resolution must be a positive"),
    ],
)
def test_bad_option_combinations(image_dir: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    folder = kwargs.pop("folder", image_dir)
    filters = kwargs.pop("filters", [])
    with pytest.raises(UserError, match=message):
        load(folder, None, tmp_path, filters, **kwargs)


def test_label_filter_does_not_apply_to_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="do not apply to --dataset_name"):
        load(None, tmp_path / "labels.csv", tmp_path, dataset_name="x/y")


# ------------------------------------------------------------------ Hugging Face datasets


def saved_dataset(tmp_path: Path, column: str = "image") -> Path:
    """A save_to_disk dataset with two good images (one grey) and one broken one."""
    good = solid_rgb(tmp_path / "src" / "a.png", (10, 150, 250), size=(20, 20)).read_bytes()
    grey = tmp_path / "src" / "g.png"
    Image.new("L", (20, 20), 40).save(grey)
    rows = {
        column: [
            {"bytes": good, "path": "a.png"},
            {"bytes": b"not an image", "path": "x.png"},
            {"bytes": grey.read_bytes(), "path": "g.png"},
        ],
        "dx": ["mel", "mel", "nv"],
    }
    features = datasets.Features({column: datasets.Image(), "dx": datasets.Value("string")})
    target = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(target))
    return target


def test_local_saved_dataset(tmp_path: Path) -> None:
    target = saved_dataset(tmp_path)
    tensor, report, names = load(None, None, tmp_path, dataset_name=str(target))
    assert names == [f"{target}[0]", f"{target}[2]"]
    assert (report.rows, report.found, report.used) == (3, 3, 2)
    assert report.corrupt == [(f"{target}[1]", "not an image (cannot identify format)")]
    assert report.converted == [(f"{target}[2]", "L")]
    assert tensor[0, :, 5, 5].tolist() == [10, 150, 250]
    assert (tensor[1] == 40).all()


def test_dataset_with_another_image_column_name(tmp_path: Path) -> None:
    target = saved_dataset(tmp_path, column="picture")
    tensor, report, _ = load(None, None, tmp_path, dataset_name=str(target), image_column="picture")
    assert tensor.shape == (2, 3, R, R) and report.used == 2


def test_dataset_cache_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = saved_dataset(tmp_path)
    first, _, _ = load(None, None, tmp_path, dataset_name=str(target))
    counter = CountingOpen()
    monkeypatch.setattr(data, "open_rgb", counter)
    again, _, _ = load(None, None, tmp_path, dataset_name=str(target))
    assert counter.calls == 0 and torch.equal(first, again)


def test_dataset_image_column_errors(tmp_path: Path) -> None:
    target = saved_dataset(tmp_path)
    with pytest.raises(UserError, match="no column 'img'; its columns are image, dx. Name the image column with"):
        load(None, None, tmp_path, dataset_name=str(target), image_column="img")
    with pytest.raises(UserError, match="Column 'dx' .* not images"):
        load(None, None, tmp_path, dataset_name=str(target), image_column="dx")


def test_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path: Path) -> None:
    assert datasets.config.HF_HUB_OFFLINE, "conftest sets HF_HUB_OFFLINE=1"
    with pytest.raises(UserError) as info:
        load(None, None, tmp_path, dataset_name="nobody-xyz/no-such-lesion-dataset")
    message = str(info.value)
    assert "'nobody-xyz/no-such-lesion-dataset'" in message
    assert "offline mode is on" in message and "not in the local cache" in message
    assert "--train_data_dir" in message
    assert not list((tmp_path / "cache").glob("*.arrow")), "nothing may be produced on failure"
