"""Checkpoint validation: the copy rate of a checkpoint's samples, and the best checkpoint
as the lowest KID among checkpoints under --max_copy_rate. (The whole loop, with KID, is
tested in test_loop.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm_lesion.core import run_files
from ddpm_lesion.evaluate.features import FeatureSpace
from ddpm_lesion.sample.samplers import SchedulerName
from ddpm_lesion.train import checkpoint_kid
from ddpm_lesion.train.checkpoint_kid import CheckpointValidator, Score, record
from tests.helpers import tiny_unet, write_images


@pytest.mark.parametrize("copied,expected", [(0, 0.0), (2, 0.5), (4, 1.0)])
def test_copy_rate_counts_the_samples_that_copy_training_images(tmp_path, monkeypatch, copied, expected):
    write_images(tmp_path / "heldout", 6, size=16, seed=9)
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    fresh = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    samples = np.concatenate([train[:copied, :, ::-1], fresh[copied:]])  # mirrored copies first
    monkeypatch.setattr(checkpoint_kid, "denoise", lambda *args, **kwargs: torch.from_numpy(samples.copy()))
    validator = CheckpointValidator(tmp_path / "heldout", 16, 4, FeatureSpace.PIXELS, SchedulerName.DDPM, 2, 0,
                                    torch.device("cpu"), train)
    score = validator.score(tiny_unet(), {"num_train_timesteps": 1000}, step=5)
    assert score.copy_rate == expected and score.step == 5


def test_best_checkpoint_is_the_lowest_kid_under_the_copy_limit(tmp_path):
    def score(step, kid, copy_rate):
        return Score(step, kid, kid - 0.01, kid + 0.01, "pixels16", copy_rate)

    assert record(tmp_path, score(1, 0.50, 0.0), max_copy_rate=0.01)
    assert not record(tmp_path, score(2, 0.10, 0.25), max_copy_rate=0.01)  # better KID, but it copies
    assert record(tmp_path, score(3, 0.30, 0.01), max_copy_rate=0.01)  # at the limit counts as under it
    assert not record(tmp_path, score(4, 0.40, 0.0), max_copy_rate=0.01)
    best = json.loads((tmp_path / run_files.BEST_CHECKPOINT).read_text())
    assert (best["step"], best["copy_rate"]) == (3, 0.01)
    rows = (tmp_path / run_files.VALIDATION_CSV).read_text().splitlines()
    assert rows[0].endswith(",copy_rate") and [r.split(",")[5] for r in rows[1:]] == ["0", "0.25", "0.01", "0"]
    assert (tmp_path / run_files.VALIDATION_PLOT).read_bytes().startswith(b"\x89PNG")


def test_a_log_from_before_the_copy_rate_still_plots(tmp_path):
    (tmp_path / run_files.VALIDATION_CSV).write_text("step,kid,ci_low,ci_high,feature_space\n1,0.5,0.4,0.6,pixels16\n")
    assert record(tmp_path, Score(2, 0.3, 0.2, 0.4, "pixels16", 0.0), max_copy_rate=0.01)
    assert (tmp_path / run_files.VALIDATION_PLOT).is_file()
