"""Writers for bad and odd image files, shared by the image and data tests.

Each writer creates one small file the way it turns up in real downloads (a cut-off
JPEG, an HTML error page saved as .jpg, a crafted PNG header) and returns its path.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def solid_rgb(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 24)) -> Path:
    """A single-colour RGB image: resizing keeps its colour, so tests can check output pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def truncated_jpeg(path: Path, size: int = 32) -> Path:
    """A noisy JPEG cut to half its bytes, like an interrupted download."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def text_as_jpeg(path: Path) -> Path:
    """An HTML error page saved under an image name (what a failed scripted download leaves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("<html><body>403 Forbidden</body></html>\n")
    return path


def zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A ~60-byte PNG whose IHDR claims `width x height` RGB pixels (30 GB if decoded)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, colour type 2 = RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path
