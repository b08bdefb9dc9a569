"""`scripts/make_photo_model.py`, the photo-pretrained starting model's recipe: its crops are
reproducible, it never reads a medical image, and a short run writes a pipeline plain
diffusers loads, with a model card that says what it was trained on. Runs on the photos of
whatever packages are installed (matplotlib, a project dependency, ships one)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_photo_model", REPO / "scripts" / "make_photo_model.py")
make_photo_model = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = make_photo_model  # its dataclasses look their module up there
_spec.loader.exec_module(make_photo_model)


def test_no_medical_image_is_among_the_photos():
    names = " ".join(photo.relative for photo in make_photo_model.PHOTOS).lower()
    for medical in ("retina", "microaneurysm", "skin", "lesion", "derm", "ph2", "isic"):
        assert medical not in names


def test_crops_are_reproducible_from_the_seed_and_cover_the_photo():
    photo = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    first = make_photo_model.random_crops([photo], 64, 32, 4.0, seed=3)
    assert first.shape == (64, 3, 32, 32) and first.dtype == torch.uint8
    assert torch.equal(first, make_photo_model.random_crops([photo], 64, 32, 4.0, seed=3))
    assert not torch.equal(first, make_photo_model.random_crops([photo], 64, 32, 4.0, seed=4))
    # Unshrunk crops (max_scale 1) are exact windows of the photo.
    exact = make_photo_model.random_crops([photo], 8, 32, 1.0, seed=0).permute(0, 2, 3, 1).numpy()
    windows = np.lib.stride_tricks.sliding_window_view(photo, (32, 32, 3)).reshape(-1, 32, 32, 3)
    assert all((windows == crop).all(axis=(1, 2, 3)).any() for crop in exact)


def test_a_short_run_writes_a_loadable_pipeline_and_its_card(tmp_path):
    out = tmp_path / "photos"
    assert make_photo_model.main(["--output", str(out), "--max_train_steps", "2", "--num_crops", "32",
                                  "--save_every", "100", "--train_batch_size", "4"]) == 0
    pipeline = DDPMPipeline.from_pretrained(out)
    assert pipeline.unet.config.sample_size == 32
    assert list((out / "unet").glob("*.safetensors")) and not list(out.rglob("*.bin"))
    card = (out / "README.md").read_text()
    assert "No dermoscopy" in card and "--max_train_steps 2" in card
    _, used = make_photo_model.load_photos()
    assert all(f"`{photo.package}/{photo.relative}`" in card for photo in used)
