"""Tests for `ddpm_lesion.data.demo_lesions` and for the demo assets made from it
(`scripts/make_demo_assets.py`): the demo only works offline if the bundled files are
complete, load the safe way, and match the code that claims to have made them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_lesion.data.demo_lesions import draw_lesion

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "demo" / "data"
DEMO_MODEL = REPO / "demo" / "pretrained" / "ddpm-lesion-tiny-32"
ISIC_2020_HEADER = [
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
    "diagnosis", "benign_malignant", "target",
]


def lesion_stats(image: Image.Image) -> tuple[float, float, float]:
    """(lesion area fraction, per-channel colour spread inside the lesion, lesion luminance).

    The lesion is every pixel darker than 80% of the median (skin) luminance: crude, but
    the classes are drawn to differ by far more than this crudeness.
    """
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    luminance = pixels @ np.array([0.299, 0.587, 0.114])
    mask = luminance < 0.8 * np.median(luminance)
    return float(mask.mean()), float(pixels[mask].std(axis=0).mean()), float(luminance[mask].mean())


def class_means(malignant: bool, n: int = 32, size: int = 48) -> np.ndarray:
    stats = [lesion_stats(draw_lesion(np.random.default_rng(seed), size, malignant)) for seed in range(n)]
    return np.mean(stats, axis=0)


# --- draw_lesion ----------------------------------------------------------------------------


@pytest.mark.parametrize("malignant", [False, True])
@pytest.mark.parametrize("varied", [False, True])
def test_same_seed_same_image_and_different_seed_different_image(malignant: bool, varied: bool) -> None:
    def draw(seed: int) -> np.ndarray:
        return np.asarray(draw_lesion(np.random.default_rng(seed), 32, malignant, varied=varied))

    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))


@pytest.mark.parametrize("size", [8, 32, 48, 64])
def test_output_is_rgb_of_requested_size(size: int) -> None:
    image = draw_lesion(np.random.default_rng(0), size, malignant=True)
    assert image.mode == "RGB"
    assert image.size == (size, size)


def test_too_small_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        draw_lesion(np.random.default_rng(0), 4, malignant=False)


def test_melanoma_like_lesions_are_larger_darker_and_more_varied_in_colour() -> None:
    benign_area, benign_spread, benign_luminance = class_means(malignant=False)
    malignant_area, malignant_spread, malignant_luminance = class_means(malignant=True)
    assert malignant_area > 1.8 * benign_area
    assert malignant_spread > 1.3 * benign_spread
    assert malignant_luminance < benign_luminance - 0.05


def test_varied_backgrounds_span_more_skin_tones() -> None:
    def corner_luminance_spread(varied: bool) -> float:
        corners = [np.asarray(draw_lesion(np.random.default_rng(seed), 32, False, varied=varied))[8:12, 2:6].mean()
                   for seed in range(48)]
        return float(np.std(corners))

    assert corner_luminance_spread(varied=True) > 1.5 * corner_luminance_spread(varied=False)


# --- bundled demo data ----------------------------------------------------------------------


def read_labels() -> list[dict[str, str]]:
    with open(DEMO_DATA / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_demo_labels_have_the_isic_2020_layout_and_consistent_classes() -> None:
    with open(DEMO_DATA / "labels.csv", newline="") as handle:
        assert next(csv.reader(handle)) == ISIC_2020_HEADER
    rows = read_labels()
    assert len({row["image_name"] for row in rows}) == len(rows)
    assert len({row["patient_id"] for row in rows}) < len(rows), "expected several images per patient"
    for row in rows:
        malignant = row["target"] == "1"
        assert row["target"] in {"0", "1"}
        assert row["diagnosis"] == ("melanoma" if malignant else "nevus")
        assert row["benign_malignant"] == ("malignant" if malignant else "benign")
    assert {row["target"] for row in rows} == {"0", "1"}


def test_every_labelled_demo_image_exists_and_nothing_else_does() -> None:
    names = {f"{row['image_name']}.png" for row in read_labels()}
    assert {path.name for path in (DEMO_DATA / "images").iterdir()} == names


def test_demo_data_stays_small() -> None:
    assert sum(path.stat().st_size for path in DEMO_DATA.rglob("*") if path.is_file()) < 1_000_000


def test_bundled_images_are_what_draw_lesion_draws_for_their_seeds() -> None:
    """Catches drift between the committed data and the code said to have made it (the
    script seeds image i of the demo stream with `default_rng([seed=0, stream=0, i])`)."""
    for index, row in enumerate(read_labels()[:8]):
        bundled = Image.open(DEMO_DATA / "images" / f"{row['image_name']}.png")
        drawn = draw_lesion(np.random.default_rng([0, 0, index]), bundled.width, malignant=row["target"] == "1")
        difference = np.abs(np.asarray(bundled, dtype=int) - np.asarray(drawn, dtype=int))
        assert difference.max() <= 2, row["image_name"]


# --- bundled pretrained model -------------------------------------------------------------


def test_bundled_model_holds_only_safetensors_weights() -> None:
    suffixes = {path.suffix for path in DEMO_MODEL.rglob("*") if path.is_file()}
    assert ".safetensors" in suffixes
    assert not suffixes & {".bin", ".pkl", ".pt", ".pth", ".ckpt"}


def test_bundled_model_loads_as_a_32px_epsilon_ddpm_and_denoises_a_batch() -> None:
    import torch
    from diffusers import DDPMPipeline, UNet2DModel

    pipeline = DDPMPipeline.from_pretrained(DEMO_MODEL, use_safetensors=True)
    assert isinstance(pipeline.unet, UNet2DModel)
    assert pipeline.unet.config.sample_size == 32
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    assert pipeline.scheduler.config.prediction_type == "epsilon"
    sample = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = pipeline.unet(sample, torch.tensor([10, 900])).sample
    assert output.shape == sample.shape
    assert torch.isfinite(output).all()
