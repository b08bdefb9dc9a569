"""Procedurally drawn, lesion-like dermoscopy images for the offline demo and for tests.

The demo must run on a fresh machine with no hub access and no real patient images, so
the project draws its own: a skin-toned field with soft texture and a dermoscope's dark
vignette, and one pigmented blob in the middle. The two classes differ the way the ABCD
rule of dermoscopy says they should (asymmetry, border, colour, diameter): benign blobs are
small, round and evenly light-brown; melanoma-like blobs are larger, off-centre, ragged and
mottled brown/black/blue-grey. They are cartoons, not medicine: good for checking that a
pipeline runs and that a class-conditional model can learn a visible difference, useless
for anything clinical.

Everything is numpy + PIL and depends only on the generator passed in, so an image is a
pure function of its seed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Drawing at a multiple of the output size and shrinking gives anti-aliased borders
# without any special edge code.
_SUPERSAMPLE = 2

# RGB in [0, 1]. Dermoscopy colours: light/dark brown (melanin in the epidermis),
# black (melanin high up), blue-grey (melanin deep in the dermis, or regression).
_LIGHT_BROWN = np.array([0.62, 0.42, 0.28])
_DARK_BROWN = np.array([0.36, 0.21, 0.13])
_BLACK = np.array([0.13, 0.09, 0.09])
_BLUE_GREY = np.array([0.42, 0.43, 0.48])


def draw_lesion(rng: np.random.Generator, size: int, malignant: bool, *, varied: bool = False) -> Image.Image:
    """Draw one `size` x `size` RGB lesion image using only `rng`.

    Args:
        rng: the only source of randomness; the same generator state gives the same image.
        size: output width and height in pixels (the look is tuned for 32-64 px).
        malignant: draw a melanoma-like lesion instead of a benign nevus-like one.
        varied: widen the background (darker and paler skin, stronger vignette, hairs) so a
            model pretrained on these images has seen more than the demo set contains.

    Returns:
        An RGB `PIL.Image`.
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    n = size * _SUPERSAMPLE
    y, x = _grid(n)
    image = _background(rng, n, x, y, varied)
    alpha, colour = (_melanoma_like if malignant else _benign)(rng, n, x, y)
    image = image * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    if varied and rng.random() < 0.15:
        image = _add_hairs(rng, image, x, y)
    pixels = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB").resize((size, size), Image.Resampling.BOX)


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], so every shape parameter is size-independent."""
    axis = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    return np.meshgrid(axis, axis, indexing="ij")


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with about `cells` blobs across the image: coarse random
    values upsampled bicubically, which is enough texture for 32-64 px images."""
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = Image.fromarray(coarse, mode="F").resize((n, n), Image.Resampling.BICUBIC)
    return np.asarray(field, dtype=np.float64)


def _background(rng: np.random.Generator, n: int, x: np.ndarray, y: np.ndarray, varied: bool) -> np.ndarray:
    """Skin: a base tone, low-frequency blotchiness, fine grain and a dark round vignette
    (the edge of the dermoscope's contact plate)."""
    darkness = rng.uniform(0.0, 1.0 if varied else 0.3)
    pale = np.array([0.93, 0.78, 0.70])
    tan = np.array([0.70, 0.48, 0.34])
    tone = (1.0 - darkness) * pale + darkness * tan + rng.normal(0.0, 0.02, 3)
    blotch = 0.035 * _smooth_noise(rng, n, 4)[..., None] * np.array([1.0, 1.2, 1.2])
    grain = 0.012 * rng.standard_normal((n, n, 1))
    flush = 0.03 * rng.random() * np.clip(_smooth_noise(rng, n, 3), 0.0, None)
    redness = flush[..., None] * np.array([0.5, -1.0, -0.8])
    image = tone + blotch + grain + redness
    strength = rng.uniform(0.2, 0.8 if varied else 0.5)
    radius = np.hypot(x - rng.normal(0.0, 0.05), y - rng.normal(0.0, 0.05))
    vignette = 1.0 - strength * np.clip((radius - 0.85) / 0.55, 0.0, 1.0) ** 2
    return image * vignette[..., None]


def _blob(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, radius: float, wobble: float, harmonics: int,
    centre_spread: float, edge: float,
) -> tuple[np.ndarray, np.ndarray]:
    """A star-shaped region with a soft edge: r(theta) = radius * (1 + sum of random
    cosines), the standard way to draw an irregular border with one number for how
    irregular. Returns the coverage in [0, 1] and the normalised distance from the centre."""
    cy, cx = rng.normal(0.0, centre_spread, 2)
    theta = np.arctan2(y - cy, x - cx)
    dist = np.hypot(y - cy, x - cx)
    boundary = np.ones_like(theta)
    for k in range(1, harmonics + 1):
        boundary += wobble * rng.normal(0.0, 1.0) / k**1.1 * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    boundary = radius * np.clip(boundary, 0.45, None)
    coverage = 1.0 / (1.0 + np.exp((dist - boundary) / edge))
    return coverage, dist / boundary


def _benign(rng: np.random.Generator, n: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A nevus: small, round, symmetric, one even light-to-mid brown, slightly darker centre."""
    coverage, rel = _blob(rng, x, y, radius=rng.uniform(0.24, 0.40), wobble=0.06, harmonics=3,
                          centre_spread=0.05, edge=0.035)
    shade = rng.uniform(0.0, 0.35)
    base = (1.0 - shade) * _LIGHT_BROWN + shade * _DARK_BROWN + rng.normal(0.0, 0.015, 3)
    centre_dark = 0.08 * np.clip(1.0 - rel, 0.0, 1.0)[..., None]
    texture = 0.015 * _smooth_noise(rng, n, 6)[..., None]
    colour = base * (1.0 - centre_dark) + texture
    return coverage * rng.uniform(0.85, 0.97), colour


def _melanoma_like(rng: np.random.Generator, n: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Melanoma-like: large, off-centre, ragged border, and a patchwork of dark brown,
    black and blue-grey chosen by competing noise fields (so the colours form regions,
    not speckle), with pigment fading unevenly towards one side (asymmetry)."""
    coverage, rel = _blob(rng, x, y, radius=rng.uniform(0.45, 0.65), wobble=0.2, harmonics=9,
                          centre_spread=0.12, edge=0.02)
    palette = np.stack([_LIGHT_BROWN * 0.85, _DARK_BROWN, _BLACK, _BLUE_GREY])
    bias = np.array([0.2, 0.8, 0.3, -0.4]) + rng.normal(0.0, 0.4, 4)
    scores = np.stack([_smooth_noise(rng, n, 5) * 1.6 + b for b in bias], axis=-1)
    weights = np.exp(scores * 2.5)
    weights /= weights.sum(axis=-1, keepdims=True)
    colour = weights @ palette
    angle = rng.uniform(0, 2 * np.pi)
    lopsided = 0.5 + 0.5 * np.tanh(2.5 * (np.cos(angle) * x + np.sin(angle) * y) + 0.8)
    density = np.clip(0.75 + 0.2 * lopsided - 0.15 * rel**2 + 0.08 * _smooth_noise(rng, n, 8), 0.35, 1.0)
    return coverage * density, colour


def _add_hairs(rng: np.random.Generator, image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A few thin dark curved lines: the commonest artefact in real dermoscopy."""
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(-0.8, 0.8)
        bend = rng.normal(0.0, 0.4)
        along = np.cos(angle) * x + np.sin(angle) * y
        across = -np.sin(angle) * x + np.cos(angle) * y - offset - bend * along**2
        line = np.exp(-((across / 0.03) ** 2))[..., None]
        image = image * (1.0 - 0.7 * line) + 0.12 * 0.7 * line
    return image
