"""Copy detection: the pure nearest-neighbour function, and an audit with planted copies
among procedurally drawn lesions of the same kind (so 'different' images really do look
alike: skin background, one brown blob in the middle)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ddpm_lesion.data.demo_lesions import draw_lesion
from ddpm_lesion.evaluate import copy_detection as memorization


def lesions(seed: int, n: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(draw_lesion(rng, size, malignant=bool(i % 2), varied=True)) for i in range(n)])


def jpeg(image: np.ndarray, quality: int = 70) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def colour_jitter(image: np.ndarray) -> np.ndarray:
    picture = Image.fromarray(image)
    for enhancer, factor in ((ImageEnhance.Brightness, 1.08), (ImageEnhance.Contrast, 0.9), (ImageEnhance.Color, 1.12)):
        picture = enhancer(picture).enhance(factor)
    return np.asarray(picture)


EDITS = {
    "hflip": lambda a: a[:, ::-1],
    "vflip": lambda a: a[::-1],
    "rot90": lambda a: np.rot90(a, 1),
    "rot270+jpeg": lambda a: jpeg(np.rot90(a, 3)),
    "jitter": colour_jitter,
    "jpeg": jpeg,
    "jitter+jpeg+flip": lambda a: jpeg(colour_jitter(a[:, ::-1]), 60),
}


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return lesions(0, 40)


def test_nearest_train_takes_the_best_variant_and_returns_cosine_distance():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Variant 1 of query 0 points exactly along train row 1; query 1 is along row 2.
    queries = np.array([[[-1.0, 0.2], [0.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]]])
    index, distance = memorization.nearest_train(queries, train)
    assert index.tolist() == [1, 2]
    assert distance == pytest.approx([0.0, 0.0], abs=1e-12)
    index, distance = memorization.nearest_train(np.array([[1.0, 0.0]]), train[1:])
    assert index.tolist() == [1] and distance[0] == pytest.approx(1.0 - 1.0 / np.sqrt(2.0))


def test_descriptors_are_invariant_to_flips_rotations_brightness_and_contrast(train):
    image = train[3]
    variants = memorization.dihedral_descriptors(image[None])[0]
    assert variants.shape == (8, 3 * 32 * 32)
    for edited in (np.rot90(image, 1), image[:, ::-1], np.rot90(image[::-1], 1)):
        own = memorization.copy_descriptors(edited[None])[0]
        assert np.max(variants @ own) == pytest.approx(1.0)
    brighter = np.clip(image.astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)
    assert memorization.copy_descriptors(brighter[None])[0] @ variants[0] > 0.999


def test_train_self_distances_exclude_the_image_itself(train):
    distances = memorization.train_self_distances(memorization.dihedral_descriptors(train[:10]))
    assert distances.shape == (10,) and distances.min() > 0.02
    twin = np.concatenate([train[:5], train[:1]])
    assert memorization.train_self_distances(memorization.dihedral_descriptors(twin))[0] == pytest.approx(0.0, abs=1e-9)


def test_audit_flags_planted_copies_and_spares_new_images_of_the_same_kind(train):
    edits = list(EDITS.values())
    copies = np.stack([edits[i % len(edits)](image) for i, image in enumerate(train)])
    audit = memorization.find_copies(copies, train)
    assert audit.near_copy.mean() >= 0.95, f"missed copies, distances {np.sort(audit.pixel_distance)[-5:]}"
    assert (audit.nearest_index == np.arange(len(train))).mean() >= 0.95
    # The copies sit far below the threshold, not just under it.
    assert np.percentile(audit.pixel_distance, 95) < audit.threshold / 2

    fresh = memorization.find_copies(lesions(1, 40), train)
    closest = np.sort(fresh.pixel_distance)[:3]
    assert fresh.copy_rate <= 0.05, f"false copies at distances {closest}, threshold {fresh.threshold}"
    assert fresh.threshold == audit.threshold and "auto" in fresh.threshold_source


def test_duplicated_training_images_do_not_collapse_the_threshold(train):
    clean = memorization.find_copies(train[:2], train)
    doubled = memorization.find_copies(train[:2], np.concatenate([train, train[:3, :, ::-1]]))
    assert doubled.train_duplicates == 6 and clean.train_duplicates == 0
    assert doubled.threshold == pytest.approx(clean.threshold)


def test_explicit_threshold_and_feature_second_opinion(train):
    synthetic = np.stack([train[0][:, ::-1], lesions(2, 1)[0]])
    feats_train = np.eye(len(train))
    feats_synth = feats_train[[0, 5]]
    audit = memorization.find_copies(synthetic, train, threshold=0.02, synthetic_features=feats_synth,
                                     train_features=feats_train)
    assert audit.near_copy.tolist() == [True, False]
    assert audit.threshold == 0.02 and audit.copy_rate == 0.5
    assert audit.feature_nearest_index.tolist() == [0, 5] and audit.feature_distance == pytest.approx([0.0, 0.0])
