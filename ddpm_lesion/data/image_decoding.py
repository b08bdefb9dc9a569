"""Safe image opening: bytes on disk -> a fully decoded 8-bit RGB image, or a reason it can't be.

Every image the project trains on goes through `open_rgb`, so the handling of bad input
(empty files, truncated downloads, files that are not images, decompression bombs, odd
pixel modes) lives in this one place. Problems are raised as `ImageProblem` with a short
reason; callers decide whether to skip-and-report (training data) or stop.

Two Pillow globals are deliberately left alone: `Image.MAX_IMAGE_PIXELS` (we check the
header size ourselves, per call) and `ImageFile.LOAD_TRUNCATED_IMAGES` (left `False` so a
truncated file raises instead of being silently padded with grey). If another library in
the same process sets `LOAD_TRUNCATED_IMAGES = True`, truncated files will decode; that is
that library's choice and cannot be undone per call without mutating the global.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""File suffixes treated as images, compared case-insensitively (`.JPG` counts)."""

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest `width * height` accepted. The biggest ISIC dermoscopy images are about
6700 x 4500 (30 M pixels); 50 M leaves headroom while refusing a header that would make
us allocate gigabytes. Pillow's own guard (`Image.MAX_IMAGE_PIXELS`, ~89 M warn / ~179 M
error) is looser, so this limit is the one that normally applies."""

# Pillow raises these (besides OSError) on malformed data while identifying or decoding.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)


class ImageProblem(Exception):
    """Why a file cannot be used as an image, in a few words (shown in the data report)."""


def is_image_file(path: Path) -> bool:
    """True if `path` has one of `IMAGE_EXTENSIONS`, in any letter case."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def open_rgb(source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str | None]:
    """Decode an image file (or its bytes) to 8-bit RGB.

    The header is read first and `width * height` checked against `max_pixels` before any
    pixel data is decoded, so a crafted header cannot make us allocate memory. The image
    is then fully decoded (`load()`), which is where truncated or corrupt data shows up.
    EXIF orientation is applied, so the image is the one a viewer shows.

    Args:
        source: a file path, or the file's bytes (as stored by a Hugging Face dataset).
        max_pixels: refuse images whose header claims more pixels than this.

    Returns:
        The RGB image, and the original mode (e.g. ``"L"``, ``"I;16"``, ``"CMYK"``) if a
        conversion happened, else ``None``.

    Raises:
        ImageProblem: the file is empty, unreadable, not an image, a decompression bomb,
            truncated/corrupt, or in a pixel mode with no defined 8-bit RGB meaning.
    """
    try:
        with _open_binary(source) as stream:
            image, original_mode = _decode(stream, max_pixels)
    except OSError as err:  # from opening the file itself, not from decoding
        raise ImageProblem(f"cannot read file ({err.strerror or err})") from None
    return image, original_mode


def _open_binary(source: Path | bytes) -> BinaryIO:
    if isinstance(source, bytes):
        return io.BytesIO(source)
    return open(source, "rb")


def _decode(stream: BinaryIO, max_pixels: int) -> tuple[Image.Image, str | None]:
    if not stream.read(1):
        raise ImageProblem("zero-byte file")
    try:
        image = Image.open(stream)
    except UnidentifiedImageError:
        raise ImageProblem("not an image (cannot identify format)") from None
    except Image.DecompressionBombError as err:
        # Pillow's hard limit (2 x MAX_IMAGE_PIXELS) fires inside Image.open, before our
        # own check can see the size; it is the same refusal, reported the same way.
        raise ImageProblem(f"decompression bomb: {err}") from None
    except _DECODE_ERRORS as err:
        raise ImageProblem(f"corrupt image header ({err})") from None

    width, height = image.size
    if width * height > max_pixels:
        raise ImageProblem(f"decompression bomb: header claims {width}x{height} pixels (limit {max_pixels})")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as err:
        raise ImageProblem(f"truncated or corrupt image data ({err})") from None
    if image.mode == "RGB":
        return image, None
    return _to_rgb(image), image.mode


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB without clipping or inventing data."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _sixteen_bit_to_rgb(image)
    if image.mode == "F":
        raise ImageProblem("32-bit float pixels have no defined range to map to 8 bits")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        return _composite_on_black(image.convert("RGBA"))
    try:
        # Covers L, 1, P, CMYK (Pillow undoes Adobe's inverted CMYK JPEGs when reading), YCbCr, ...
        return image.convert("RGB")
    except ValueError:
        raise ImageProblem(f"unsupported pixel mode {image.mode}") from None


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey (0..65535) to 8 bits with rounding: 65535 -> 255, 32768 -> 128.

    Pillow's own `convert("L")` clips at 255 instead of scaling, which turns almost every
    16-bit image white. Mode "I" (32-bit int) is how older Pillow and some TIFFs hold
    16-bit data; values outside 0..65535 have no known scale, so they are refused.
    """
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageProblem(
            f"{image.mode} pixels outside 0..65535 (range {values.min()}..{values.max()}); no defined 8-bit scale"
        )
    grey = ((values + 128) // 257).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1))


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """Flatten transparency onto black.

    Black, because dermoscopy images sit inside a dark vignette (the lens field of view);
    transparent areas in exported or masked images stand for "outside the lesion view",
    and black keeps them looking like the real background the model learns from. White
    would add a bright border that no real training image has.
    """
    background = Image.new("RGB", rgba.size, (0, 0, 0))
    background.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return background


def resize_and_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Scale so the shorter side is `resolution` (Lanczos), then cut the centre square.

    One rule for training, evaluation and utility images, so metrics compare like with like.
    Cropping rather than padding keeps every training pixel real; dermoscopy images put
    the lesion near the centre, so the cut edges are mostly background.
    """
    return ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
