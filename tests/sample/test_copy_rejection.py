"""Copy rejection: which image fills which slot, what is recorded, and how it round-trips
through the PNG text chunks into rejected.csv. End to end (byte-identity across shards and
resumes) in tests/scripts/test_sample_ddpm.py."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ddpm_lesion.evaluate.copy_detection import build_index
from ddpm_lesion.sample import copy_rejection
from ddpm_lesion.sample.copy_rejection import RESERVE_START, Reference, fill_block, reserve_block


def noise_images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference() -> Reference:
    train = noise_images(0, 6)
    return Reference(build_index(train), [f"train_{i}.png" for i in range(6)], None)


def test_near_copies_are_replaced_by_the_next_fresh_reserve_candidates(reference):
    train, fresh = noise_images(0, 6), noise_images(1, 6)
    block = np.stack([train[0], fresh[0], np.rot90(train[2]), fresh[1]])
    reserve = np.stack([train[3][:, ::-1], fresh[2], fresh[3], fresh[4]])
    rounds = []

    def sample_reserve(round_):
        rounds.append(round_)
        return range(100, 104), reserve

    slots = fill_block(range(8, 12), block, reference, sample_reserve)
    assert rounds == [0]  # one reserve batch was enough
    assert [slots[i].source_index for i in range(8, 12)] == [101, 9, 102, 11]
    assert np.array_equal(slots[8].pixels, fresh[2]) and np.array_equal(slots[10].pixels, fresh[3])
    assert np.array_equal(slots[9].pixels, fresh[0]) and not slots[9].rejected
    assert [(c, name) for c, name, _, _ in slots[8].rejected] == [(8, "train_0.png"), (100, "train_3.png")]
    assert [(c, name) for c, name, _, _ in slots[10].rejected] == [(10, "train_2.png")]
    assert all(distance <= threshold for _, _, distance, threshold in slots[8].rejected)


def test_a_model_that_only_copies_is_stopped_with_advice(reference):
    train = noise_images(0, 6)
    with pytest.raises(Exception, match="reproduces its training set"):
        fill_block(range(2), train[:2], reference, lambda round_: (range(4), train[2:6]))


def test_reserve_blocks_lie_past_every_run_and_never_overlap():
    for batch in (1, 4, 16, 256):
        starts = {reserve_block(b, r, batch) for b in range(50) for r in range(copy_rejection.MAX_ROUNDS)}
        assert len(starts) == 50 * copy_rejection.MAX_ROUNDS and min(starts) * batch >= RESERVE_START


def test_rejections_round_trip_through_png_text_into_rejected_csv(tmp_path):
    slot = copy_rejection.Slot(np.zeros((2, 2, 3), np.uint8), 205, [(3, "a|b;c.png", 0.01, 0.02), (204, "x.png", 0.0, 0.5)])
    assert copy_rejection.png_fields(copy_rejection.Slot(slot.pixels, 4)) == {}
    texts = {3: copy_rejection.png_fields(slot), 4: {}}
    assert texts[3]["source_index"] == "205"
    rows = copy_rejection.rejected_rows(texts)
    copy_rejection.write_rejected(tmp_path / "rejected.csv", rows)
    with open(tmp_path / "rejected.csv", newline="") as handle:
        read = list(csv.DictReader(handle))
    assert read == [
        {"index": "3", "candidate_index": "3", "nearest_train_file": "a|b;c.png", "distance": "0.01", "threshold": "0.02"},
        {"index": "3", "candidate_index": "204", "nearest_train_file": "x.png", "distance": "0.0", "threshold": "0.5"},
    ]
