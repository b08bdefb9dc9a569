"""Copy detection: the pure nearest-neighbour function, the alignment search against a
brute-force computation, and audits with planted copies among procedurally drawn lesions of
the same kind (so 'different' images really do look alike: skin background, one brown blob
in the middle). Detection rates on real dermoscopy are measured by bench/copies.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm_lesion.data.demo_lesions import draw_lesion
from ddpm_lesion.evaluate import copy_detection, copy_edits


def lesions(seed: int, n: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(draw_lesion(rng, size, malignant=bool(i % 2), varied=True)) for i in range(n)])


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return lesions(0, 40)


@pytest.fixture(scope="module")
def index(train) -> copy_detection.CopyIndex:
    return copy_detection.build_index(train)


def test_nearest_train_takes_the_best_variant_and_returns_cosine_distance():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # Variant 1 of query 0 points exactly along train row 1; query 1 is along row 2.
    queries = np.array([[[-1.0, 0.2], [0.0, 3.0]], [[2.0, 2.0], [2.0, 2.0]]])
    index, distance = copy_detection.nearest_train(queries, train)
    assert index.tolist() == [1, 2]
    assert distance == pytest.approx([0.0, 0.0], abs=1e-12)
    index, distance = copy_detection.nearest_train(np.array([[1.0, 0.0]]), train[1:])
    assert index.tolist() == [1] and distance[0] == pytest.approx(1.0 - 1.0 / np.sqrt(2.0))


def test_whole_image_descriptors_are_invariant_to_flips_rotations_brightness_and_contrast(train):
    image = train[3]
    variants = copy_detection.dihedral_descriptors(image[None])[0]
    assert variants.shape == (8, 3 * 32 * 32)
    for edited in (np.rot90(image, 1), image[:, ::-1], np.rot90(image[::-1], 1)):
        own = copy_detection.copy_descriptors(edited[None])[0]
        assert np.max(variants @ own) == pytest.approx(1.0)
    brighter = np.clip(image.astype(int) * 0.8 + 30, 0, 255).astype(np.uint8)
    assert copy_detection.copy_descriptors(brighter[None])[0] @ variants[0] > 0.999


def test_window_similarity_matches_a_brute_force_search():
    rng = np.random.default_rng(4)
    queries = torch.from_numpy(rng.normal(size=(2, 3, 3, 5, 5))).float()  # 2 queries, 3 variants
    candidates = torch.from_numpy(rng.normal(size=(2, 4, 3, 8, 8))).float()
    got = copy_detection._window_similarity(copy_detection._unit(queries).view(queries.shape), candidates)

    def unit(a: np.ndarray) -> np.ndarray:
        a = a - a.mean(axis=(1, 2), keepdims=True)
        return a.ravel() / np.linalg.norm(a)

    for b in range(2):
        for k in range(4):
            best = max(unit(queries[b, v].numpy()) @ unit(candidates[b, k, :, y:y + 5, x:x + 5].numpy())
                       for v in range(3) for y in range(4) for x in range(4))
            assert got[b, k].item() == pytest.approx(best, abs=1e-5)


def test_a_shifted_window_of_the_same_picture_is_at_distance_zero():
    big = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    original, shifted = big[4:36, 4:36], big[7:39, 1:33]  # 3 px down, 3 px left
    index = copy_detection.build_index(np.stack([original]), edits=())
    # Near zero, not zero: the low-pass sees the replicated border of one and real pixels of the other.
    assert index.distances(shifted[None], np.array([[0]]))[0, 0] < 0.02
    other = np.random.default_rng(6).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert index.distances(other, np.array([[0]]))[0, 0] > 0.5


def test_the_zoom_grid_covers_a_ten_percent_crop_of_fine_texture(monkeypatch):
    """A 10% crop resized back is a zoom of 32/29 = 1.10; on fine texture (real skin is
    low-contrast and high-frequency) the nearest searched zoom must be close to it, or the
    copy's distance grows past what its JPEG re-encodes leave (bench/copies.py)."""
    rng = np.random.default_rng(7)
    fine = np.stack([copy_edits.apply("blur1", rng.integers(60, 200, (32, 32, 3), dtype=np.uint8), rng)
                     for _ in range(8)])
    crops = np.stack([copy_edits.apply("crop10%", image, np.random.default_rng(i)) for i, image in enumerate(fine)])
    own = np.arange(len(fine))[:, None]

    def crop_distance() -> float:
        index = copy_detection.build_index(fine, edits=())
        return float(np.median(index.distances(crops, own, orientations=False)))

    with_grid = crop_distance()
    monkeypatch.setattr(copy_detection, "ZOOM_SIZES", tuple(z for z in copy_detection.ZOOM_SIZES if z != 35))
    without_1_10 = crop_distance()
    assert with_grid < 0.75 * without_1_10, (with_grid, without_1_10)


def test_thresholds_are_calibrated_on_each_images_own_copies(train, index):
    assert index.thresholds.shape == (len(train),) and (index.thresholds > 0).all()
    again = copy_detection.build_index(train)
    assert np.array_equal(index.thresholds, again.thresholds)
    for i in (0, 7):
        copies = np.stack([copy_edits.apply(name, train[i], np.random.default_rng([0, n, i]))
                           for n, name in enumerate(copy_detection.CALIBRATION_EDITS)])
        own = index.distances(copies, np.full((len(copies), 1), i), orientations=False)
        cap = copy_detection.NEIGHBOUR_CAP * index.neighbour_distance[i]
        assert index.thresholds[i] == pytest.approx(min(copy_detection.CALIBRATION_MARGIN * own.max(), cap))


def test_neighbour_distance_is_the_nearest_other_training_image(train):
    few = train[:8]  # fewer than the shortlist: every other image is a candidate
    index = copy_detection.build_index(few, edits=())
    everyone = np.array([[j for j in range(8) if j != i] for i in range(8)])
    assert index.neighbour_distance == pytest.approx(index.distances(few, everyone).min(axis=1))
    assert index.duplicates == 0


@pytest.mark.parametrize("edit", ["rot90", "jpeg50", "blur1", "crop10%", "translate10%", "noise3",
                                  "translate10%+jpeg50", "transpose+crop10%", "bright+10%+contrast+10%"])
def test_audit_flags_planted_copies(edit, train, index):
    rng = np.random.default_rng(11)
    copies = np.stack([copy_edits.apply(edit, image, rng) for image in train])
    audit = copy_detection.find_copies(copies, index)
    assert audit.near_copy.mean() >= 0.95, f"missed {edit} copies at ratio {np.sort(audit.closeness)[-3:]}"
    assert np.array_equal(audit.near_copy, audit.closeness <= 1)
    assert (audit.nearest_index == np.arange(len(train))).mean() >= 0.95


def test_audit_spares_new_images_of_the_same_kind(train, index):
    fresh = copy_detection.find_copies(lesions(1, 40), index)
    assert fresh.copy_rate <= 0.05, f"false copies at {fresh.pixel_distance[fresh.near_copy]}"
    assert "auto" in fresh.threshold_source and fresh.threshold == pytest.approx(np.median(index.thresholds))
    assert np.array_equal(fresh.train_nn_distance, index.neighbour_distance) and fresh.train_duplicates == 0


def test_duplicated_training_images_are_counted(train):
    doubled = copy_detection.find_copies(train[:2], np.concatenate([train[:10], train[:3, :, ::-1]]))
    assert doubled.train_duplicates == 6


def test_explicit_threshold_and_feature_second_opinion(train, index):
    synthetic = np.stack([train[0][:, ::-1], lesions(2, 1)[0]])
    feats_train = np.eye(len(train))
    feats_synth = feats_train[[0, 5]]
    audit = copy_detection.find_copies(synthetic, index, threshold=0.001, synthetic_features=feats_synth,
                                       train_features=feats_train)
    assert audit.near_copy.tolist() == [True, False]
    assert audit.threshold == 0.001 and audit.copy_rate == 0.5 and audit.nearest_index[0] == 0
    assert (audit.applied_threshold == 0.001).all()
    assert audit.feature_nearest_index.tolist() == [0, 5] and audit.feature_distance == pytest.approx([0.0, 0.0])


def test_shortlist_is_the_same_however_the_queries_are_chunked(train, index, monkeypatch):
    whole = index.shortlist(train, exclude=np.arange(len(train)))
    monkeypatch.setattr(copy_detection, "SHORTLIST_FLOATS", 1)  # one query per chunk
    assert np.array_equal(index.shortlist(train, exclude=np.arange(len(train))), whole)
    assert not (whole == np.arange(len(train))[:, None]).any()  # never the image itself


def test_a_training_image_listed_twice_still_catches_its_copies(train):
    twice = np.concatenate([train[:10], train[:2]])
    index = copy_detection.build_index(twice)
    assert index.duplicates == 4 and np.isfinite(index.neighbour_distance).all()  # the twin is not the neighbour
    copies = np.stack([copy_edits.apply("jpeg85", image, np.random.default_rng(0)) for image in train[:2]])
    assert copy_detection.nearest_copies(copies, index).near_copy.all()
