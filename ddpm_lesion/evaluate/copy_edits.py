"""The edits a copy of a training image may have gone through, as named functions.

The copy detector must see through them (issue 16): flips and 90° rotations, JPEG
re-encoding at quality >= 50, brightness / contrast / saturation changes of +-10%,
Gaussian blur up to sigma = 1 px, translation or crop of up to 10% resized back,
additive noise up to sigma = 3 grey levels, and any two of these in a row. One catalogue
serves the copy-robustness benchmark (`bench/copies.py`), the detector's tests, and the
detector itself, which calibrates its threshold on edited copies of the training images.

Every edit takes a uint8 `(H, W, 3)` array and a numpy Generator (used only by the random
ones: noise, and which corner a crop keeps) and returns a uint8 array of the same shape.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Edit = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def jpeg(quality: int) -> Edit:
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))
    return edit


def enhance(kind: type, factor: float) -> Edit:
    """PIL's Brightness / Contrast / Color enhancer: `factor` 1.1 is +10%."""
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(kind(Image.fromarray(image)).enhance(factor))
    return edit


def blur(sigma: float) -> Edit:
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))
    return edit


def noise(sigma: float) -> Edit:
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(image + rng.normal(0.0, sigma, image.shape), 0, 255).round().astype(np.uint8)
    return edit


def crop(fraction: float) -> Edit:
    """Keep a `1 - fraction` window at a random corner and resize it back (a zoom-in)."""
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        ch, cw = round(h * (1 - fraction)), round(w * (1 - fraction))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        window = Image.fromarray(image[top:top + ch, left:left + cw])
        return np.asarray(window.resize((w, h), Image.BICUBIC))
    return edit


def translate(fraction: float) -> Edit:
    """Shift by `fraction` of the side in a random diagonal direction, the uncovered border
    filled by repeating the edge (what a crop-and-pad augmentation leaves)."""
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        dy, dx = (round(h * fraction) * int(rng.choice([-1, 1])), round(w * fraction) * int(rng.choice([-1, 1])))
        padded = np.pad(image, ((abs(dy), abs(dy)), (abs(dx), abs(dx)), (0, 0)), mode="edge")
        return padded[abs(dy) - dy:abs(dy) - dy + h, abs(dx) - dx:abs(dx) - dx + w]
    return edit


def dihedral(k: int, mirror: bool) -> Edit:
    def edit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(image[:, ::-1] if mirror else image, k))
    return edit


SINGLE_EDITS: dict[str, Edit] = {
    "hflip": dihedral(0, True), "rot90": dihedral(1, False), "rot180": dihedral(2, False),
    "transpose": dihedral(1, True),
    "jpeg50": jpeg(50), "jpeg70": jpeg(70), "jpeg85": jpeg(85), "jpeg95": jpeg(95),
    "bright+10%": enhance(ImageEnhance.Brightness, 1.1), "bright-10%": enhance(ImageEnhance.Brightness, 0.9),
    "contrast+10%": enhance(ImageEnhance.Contrast, 1.1), "contrast-10%": enhance(ImageEnhance.Contrast, 0.9),
    "satur+10%": enhance(ImageEnhance.Color, 1.1), "satur-10%": enhance(ImageEnhance.Color, 0.9),
    "blur0.5": blur(0.5), "blur1": blur(1.0),
    "crop10%": crop(0.1), "translate10%": translate(0.1),
    "noise1": noise(1.0), "noise3": noise(3.0),
}

# Pairs of two edits: the hardest of each family combined with the others. Orientation
# edits commute with the detector's dihedral search, so one representative suffices.
PAIRED_EDITS: dict[str, tuple[str, str]] = {
    f"{a}+{b}": (a, b) for a, b in (
        ("jpeg50", "noise3"), ("jpeg50", "blur1"), ("jpeg50", "crop10%"), ("jpeg50", "contrast-10%"),
        ("crop10%", "noise3"), ("crop10%", "blur1"), ("translate10%", "jpeg50"), ("translate10%", "noise3"),
        ("contrast-10%", "noise3"), ("blur1", "noise3"), ("satur-10%", "jpeg50"), ("rot90", "jpeg50"),
        ("transpose", "crop10%"), ("bright+10%", "contrast+10%"),
    )
}


def apply(name: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the single edit or `a+b` pair called `name` from the catalogue."""
    for part in PAIRED_EDITS.get(name, (name,)):
        image = SINGLE_EDITS[part](image, rng)
    return image


ALL_EDITS: tuple[str, ...] = tuple(SINGLE_EDITS) + tuple(PAIRED_EDITS)
