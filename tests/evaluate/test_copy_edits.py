"""The copy-edit catalogue: every edit keeps the image's shape and dtype, is reproducible
from the generator, and does what its name says (checked against an independent
computation where one is simple)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_lesion.evaluate import copy_edits


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(40, 200, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", copy_edits.ALL_EDITS)
def test_every_edit_keeps_shape_and_is_reproducible(name, image):
    first = copy_edits.apply(name, image, np.random.default_rng(5))
    again = copy_edits.apply(name, image, np.random.default_rng(5))
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, again)
    assert not np.array_equal(first, image), f"{name} left the image unchanged"


def test_geometric_edits_match_numpy(image):
    rng = np.random.default_rng(0)
    assert np.array_equal(copy_edits.apply("hflip", image, rng), image[:, ::-1])
    assert np.array_equal(copy_edits.apply("rot90", image, rng), np.rot90(image, 1))
    shifted = copy_edits.apply("translate10%", image, rng)
    # A 3 px diagonal shift: some 29x29 block of the result equals a block of the input.
    assert any(np.array_equal(shifted[max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)],
                              image[max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)])
               for dy in (-3, 3) for dx in (-3, 3))


def test_noise_has_the_named_strength(image):
    flat = np.full((64, 64, 3), 128, np.uint8)
    noisy = copy_edits.apply("noise3", flat, np.random.default_rng(0)).astype(float) - 128
    assert noisy.std() == pytest.approx(3.0, rel=0.05) and abs(noisy.mean()) < 0.1


def test_pairs_apply_both_edits_in_order(image):
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    paired = copy_edits.apply("jpeg50+noise3", image, rng_a)
    manual = copy_edits.SINGLE_EDITS["noise3"](copy_edits.SINGLE_EDITS["jpeg50"](image, rng_b), rng_b)
    assert np.array_equal(paired, manual)
