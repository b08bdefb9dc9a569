"""Feature extractors: is the offline EfficientNet-Lite0 really an ImageNet classifier, does
the FID Inception graph load a weight file strictly, and does `auto` say so when it falls back."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.demo_lesions import draw_lesion
from ddpm_lesion.data.image_decoding import resize_and_crop
from ddpm_lesion.evaluate import efficientnet_lite, features, fid_inception

# The photo of Grace Hopper in uniform that matplotlib ships as sample data is the
# classic test image of TensorFlow's label_image example, whose expected top class is
# ImageNet 653 "military uniform" (index 652 without TF's background class).
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
MILITARY_UNIFORM, SUIT, WINDSOR_TIE, MORTARBOARD = 652, 834, 906, 667


@pytest.fixture(scope="module")
def effnet() -> efficientnet_lite.EfficientNetLite0:
    return efficientnet_lite.load_efficientnet_lite0()


def square(image: Image.Image, size: int) -> np.ndarray:
    return np.asarray(resize_and_crop(image, size))


def _batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def test_efficientnet_lite0_classifies_a_real_photo_correctly(effnet):
    photo = square(Image.open(GRACE_HOPPER).convert("RGB"), 224)
    with torch.no_grad():
        probabilities = effnet(efficientnet_lite.normalise(_batch(photo))).softmax(1)[0]
    top5 = probabilities.topk(5).indices.tolist()
    assert top5[0] == MILITARY_UNIFORM, top5
    assert {SUIT, WINDSOR_TIE, MORTARBOARD} & set(top5[1:])


def test_efficientnet_features_know_two_crops_of_one_photo_from_a_lesion(effnet):
    photo = np.asarray(Image.open(GRACE_HOPPER).convert("RGB"))
    crop_a, crop_b = square(Image.fromarray(photo[:480]), 96), square(Image.fromarray(photo[40:]), 96)
    lesion = np.asarray(draw_lesion(np.random.default_rng(0), 96, malignant=True))
    with torch.no_grad():
        feats = effnet.features(efficientnet_lite.normalise(_batch(crop_a, crop_b, lesion)))
    assert feats.shape == (3, 1280)
    same = torch.dist(feats[0], feats[1])
    assert same < 0.5 * torch.dist(feats[0], feats[2]) and same < 0.5 * torch.dist(feats[1], feats[2])


def test_pixel_features_are_the_shrunk_image():
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[:, :16] = 255  # top half white
    feats = features.extract(features.pixel_extractor(), image)
    grid = feats.reshape(3, 16, 16)
    assert feats.shape == (1, 768) and grid[:, :8].min() == 1.0 and grid[:, 8:].max() == 0.0


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """A state_dict with the real file's names and shapes (random values)."""
    folder = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "pt_inception-2015-12-05-6726825d.pth"
    torch.manual_seed(0)
    torch.save(fid_inception.FIDInceptionV3().state_dict(), path)
    return path


def test_fid_inception_loads_strictly_and_gives_2048_features(inception_file, tmp_path):
    model = fid_inception.load_fid_inception(inception_file)
    with torch.no_grad():
        out = model.features(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (1, fid_inception.FEATURE_DIM) and torch.isfinite(out).all()
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match="not the FID Inception-v3 state_dict"):
        fid_inception.load_fid_inception(wrong)


def test_auto_uses_cached_inception_weights(inception_file, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(inception_file.parents[2]))
    extractors, warnings = features.resolve_extractors([features.FeatureSpace.AUTO])
    assert [e.key for e in extractors] == ["inception-v3-fid", "pixels16"] and warnings == []


def test_auto_without_inception_weights_warns_and_uses_efficientnet(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    extractors, warnings = features.resolve_extractors([features.FeatureSpace.AUTO, features.FeatureSpace.EFFICIENTNET])
    assert [e.key for e in extractors] == ["efficientnet-lite0", "pixels16"]
    assert len(warnings) == 1 and "not found offline" in warnings[0] and str(tmp_path) in warnings[0]
    with pytest.raises(UserError, match="--inception_weights"):
        features.resolve_extractors([features.FeatureSpace.INCEPTION], inception_weights=tmp_path / "nope.pth")
