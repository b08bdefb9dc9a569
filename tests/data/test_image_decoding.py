"""`open_rgb` on a corpus of bad and odd inputs, each written by the test that uses it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from ddpm_lesion.data.image_decoding import ImageProblem, is_image_file, open_rgb
from tests.data_fixtures import bomb_png, solid_rgb, text_as_jpeg, truncated_jpeg, zero_byte


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# ---------------------------------------------------------------- refused inputs


def test_zero_byte_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageProblem, match="zero-byte file"):
        open_rgb(zero_byte(tmp_path / "empty.jpg"))


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageProblem, match="truncated or corrupt"):
        open_rgb(truncated_jpeg(tmp_path / "cut.jpg"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_text_named_jpg_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageProblem, match="not an image"):
        open_rgb(text_as_jpeg(tmp_path / "page.jpg"))


def test_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ImageProblem, match="cannot read file"):
        open_rgb(tmp_path / "nope.png")


def test_bomb_header_is_refused_quickly(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    start = time.perf_counter()
    with pytest.raises(ImageProblem, match="decompression bomb"):
        open_rgb(path)
    assert time.perf_counter() - start < 1.0
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's default, untouched


def test_bomb_refused_by_our_check_even_without_pillows_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Some libraries set MAX_IMAGE_PIXELS = None process-wide; our limit must still hold.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with pytest.raises(ImageProblem, match=r"header claims 100000x100000 pixels \(limit 50000000\)"):
        open_rgb(bomb_png(tmp_path / "bomb.png"))


def test_max_pixels_limit_is_per_call(tmp_path: Path) -> None:
    path = solid_rgb(tmp_path / "a.png", (10, 20, 30), size=(30, 20))
    with pytest.raises(ImageProblem, match="header claims 30x20 pixels \\(limit 599\\)"):
        open_rgb(path, max_pixels=599)
    image, _ = open_rgb(path, max_pixels=600)
    assert image.size == (30, 20)


def test_32_bit_float_pixels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(path)
    with pytest.raises(ImageProblem, match="float"):
        open_rgb(path)


# ---------------------------------------------------------------- mode conversions


def test_rgb_is_returned_unconverted(tmp_path: Path) -> None:
    image, original = open_rgb(solid_rgb(tmp_path / "a.png", (200, 100, 50)))
    assert original is None
    assert image.mode == "RGB"
    assert pixels(image)[0, 0].tolist() == [200, 100, 50]


def test_bytes_are_accepted_like_a_file(tmp_path: Path) -> None:
    path = solid_rgb(tmp_path / "a.png", (1, 2, 3))
    image, _ = open_rgb(path.read_bytes())
    assert pixels(image)[5, 5].tolist() == [1, 2, 3]
    with pytest.raises(ImageProblem, match="zero-byte"):
        open_rgb(b"")


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.new("L", (8, 8), 77).save(path)
    image, original = open_rgb(path)
    assert original == "L"
    assert pixels(image).shape == (8, 8, 3)
    assert (pixels(image) == 77).all()


def test_grayscale_with_alpha_is_composited_on_black(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.merge("LA", [Image.new("L", (4, 4), 200), Image.new("L", (4, 4), 0)]).save(path)
    image, original = open_rgb(path)
    assert original == "LA"
    assert (pixels(image) == 0).all()


def test_palette_image_keeps_its_colours(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    solid = Image.new("RGB", (8, 8), (255, 0, 0))
    solid.paste((0, 0, 255), (0, 0, 4, 8))
    solid.convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(path)
    image, original = open_rgb(path)
    assert original == "P"
    assert pixels(image)[0, 0].tolist() == [0, 0, 255]
    assert pixels(image)[0, 7].tolist() == [255, 0, 0]


def test_palette_transparency_is_composited_on_black(tmp_path: Path) -> None:
    path = tmp_path / "pt.png"
    palette_image = Image.new("P", (4, 4), 1)
    palette_image.putpalette([255, 255, 255, 0, 255, 0])  # index 0 white, index 1 green
    palette_image.putpixel((0, 0), 0)
    palette_image.save(path, transparency=0)
    image, original = open_rgb(path)
    assert original == "P"
    assert pixels(image)[0, 0].tolist() == [0, 0, 0]  # transparent white -> black
    assert pixels(image)[3, 3].tolist() == [0, 255, 0]


def test_rgba_is_alpha_composited_on_black(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 40)
    rgba[..., 3] = [[255, 0], [128, 255]]
    Image.fromarray(rgba, mode="RGBA").save(path)
    image, original = open_rgb(path)
    assert original == "RGBA"
    out = pixels(image)
    assert out[0, 0].tolist() == [200, 100, 40]  # opaque: unchanged
    assert out[0, 1].tolist() == [0, 0, 0]  # fully transparent: background
    assert np.abs(out[1, 0].astype(int) - [100, 50, 20]).max() <= 1  # half: blended


def test_cmyk_jpeg_converts_to_the_right_colour(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (200, 100, 50)).convert("CMYK").save(path, quality=95)
    image, original = open_rgb(path)
    assert original == "CMYK"
    assert np.abs(pixels(image)[8, 8].astype(int) - [200, 100, 50]).max() <= 3


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path, mode: str) -> None:
    values = np.array([[0, 257], [32768, 65535]])
    if mode == "I":
        source = Image.fromarray(values.astype(np.int32))
        path = tmp_path / "i32.tif"
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        source = Image.frombytes(mode, (2, 2), values.astype(dtype).tobytes())
        path = tmp_path / f"{mode.replace(';', '_')}.tif"
    source.save(path)
    image, original = open_rgb(path)
    assert original is not None and original.startswith("I")
    assert pixels(image)[..., 0].tolist() == [[0, 1], [128, 255]]
    assert (pixels(image)[..., 0] == pixels(image)[..., 2]).all()


def test_sixteen_bit_png_is_scaled(tmp_path: Path) -> None:
    path = tmp_path / "s16.png"
    Image.fromarray(np.array([[32768, 65535]], dtype=np.uint16)).save(path)
    image, original = open_rgb(path)
    assert original == "I;16"
    assert pixels(image)[0, :, 1].tolist() == [128, 255]


def test_one_bit_image_maps_to_black_and_white(tmp_path: Path) -> None:
    path = tmp_path / "bw.png"
    bw = Image.new("1", (4, 4), 0)
    bw.putpixel((1, 1), 1)
    bw.save(path)
    image, original = open_rgb(path)
    assert original == "1"
    assert pixels(image)[1, 1].tolist() == [255, 255, 255]
    assert pixels(image)[0, 0].tolist() == [0, 0, 0]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.new("RGB", (32, 16), (90, 90, 90)).save(path, exif=exif)
    image, _ = open_rgb(path)
    assert image.size == (16, 32)


def test_tiny_image_opens_at_its_own_size(tmp_path: Path) -> None:
    image, original = open_rgb(solid_rgb(tmp_path / "tiny.bmp", (9, 8, 7), size=(4, 4)))
    assert original is None
    assert image.size == (4, 4)


def test_image_extensions_match_any_case() -> None:
    assert is_image_file(Path("a/ISIC_1.JPG"))
    assert is_image_file(Path("x.Tiff"))
    assert not is_image_file(Path("labels.csv"))
    assert not is_image_file(Path("ISIC_0000001"))
