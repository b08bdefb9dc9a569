"""Copy detection: is a synthetic image a (lightly edited) copy of a training image?

Diffusion models fine-tuned on a few hundred images can reproduce training images
(Carlini et al. 2023, "Extracting Training Data from Diffusion Models"; Somepalli et al.
2023, "Diffusion Art or Digital Forgery?"). A copy may come back flipped or rotated (the
training augmentations), re-encoded, blurred, noisier, recoloured a little, shifted or
zoomed a little (`copy_edits` lists what the detector is measured against). On real
dermoscopy the texture is low-contrast and high-frequency, exactly what JPEG, blur and noise
change, so pixels are not compared as they are:

- alignment distance: both images area-resized to 32x32 and low-passed (Gaussian,
  sigma = `LOWPASS_SIGMA` px, which JPEG blocks, blur and grey-level noise hardly survive);
  the query's central 24x24 window (each channel's mean removed, unit norm: blind to
  brightness and contrast) is matched against every 24x24 window of the training image
  at zoom 1, 1.06, 1.09 and 1.125 (shifts up to +-4..6 px: translations and crops of up to 10%),
  for each of the query's 8 flips/rotations; distance = 1 - the best cosine similarity.
- shortlist: that search is run only against the `SHORTLIST` training images most similar
  at a coarse scale (sigma 2 px, 16x16, +-4 px shifts, 8 flips/rotations), which keeps it
  linear in the number of training images.
- threshold, per training image, calibrated on edited copies of the image itself: the
  largest distance of its copies under the hardest edits of `copy_edits`
  (`CALIBRATION_EDITS`), times `CALIBRATION_MARGIN`, capped at `NEIGHBOUR_CAP` x its distance
  to its nearest other training image. A textured image moves far under JPEG and gets a wide
  threshold; a smooth one, whose distinct look-alikes are close, gets a narrow one. A global
  threshold cannot do both (measured in BENCHMARKS.md).

A synthetic image is a near copy when its distance to some training image is within that
image's threshold. A feature-space cosine distance (from the evaluation's feature
extractor) is reported beside it as a second opinion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_lesion.evaluate import copy_edits

DESCRIPTOR_SIZE = 32
WINDOW = 24
# A 10% crop resized back is a zoom of 32/29 = 1.10: without the 35 px step its JPEG-50 copies
# fell outside the threshold more often (bench/copies.py, ph2-dev: jpeg50+crop10% 92% -> 95%
# over 3 edit seeds, held-out flags unchanged).
ZOOM_SIZES = (32, 34, 35, 36)
LOWPASS_SIGMA = 1.0
# Pixels are compared as luma plus chroma at a quarter weight: JPEG's 4:2:0 subsampling and
# quantisation wreck the chroma of a 32x32 patch far more than its luma (bench/copies.py on
# ph2-dev: JPEG 50 pairs 85-94% -> 91-96% flagged, held-out 1.1% -> 0.7%). The coarse
# shortlist stays RGB: in luma it lost the source of ~3% of translated procedural lesions.
CHROMA_WEIGHT = 0.25
_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]])
COARSE_SIGMA = 2.0
SHORTLIST = 10
# Queries searched in one grouped convolution: ~40 MB of intermediate sums at K = 10.
BATCH = 32
SHORTLIST_FLOATS = 32 * 2 ** 20
CALIBRATION_EDITS = ("jpeg50", "blur1", "noise3", "crop10%", "translate10%", "bright+10%",
                     "jpeg50+crop10%", "translate10%+jpeg50", "jpeg50+blur1", "jpeg50+noise3")
CALIBRATION_MARGIN = 1.5
# A threshold never reaches past this fraction of the distance from the image to its nearest
# other training image: distinct pictures of the same kind come that close, so new images
# will too. On ph2-dev (BENCHMARKS.md) 0.5 left the JPEG-50 copies of overlapping patches
# outside (translate10%+jpeg50 94.7%); 0.6 catches them at the same 2/273 held-out flags, and
# 0.8 flags 5 of 273.
NEIGHBOUR_CAP = 0.6
# Training images this close to another training image are the same picture (re-saved,
# resized, listed twice — ISIC releases overlap); the audit reports how many there are.
DUPLICATE_DISTANCE = 1e-3


# ------------------------------------------------------------ whole-image descriptors
# (the exact-duplicate finder of `balance --dedupe` uses these: no alignment, no low-pass)

def copy_descriptors(images: np.ndarray, size: int = DESCRIPTOR_SIZE) -> np.ndarray:
    """uint8 `(N, H, W, 3)` -> `(N, 3*size*size)`: area-resized, per-channel zero-mean, unit-norm."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double()
    small = F.adaptive_avg_pool2d(tensor, size)
    flat = (small - small.mean(dim=(2, 3), keepdim=True)).flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


def dihedral_descriptors(images: np.ndarray, size: int = DESCRIPTOR_SIZE) -> np.ndarray:
    """`(N, 8, D)`: descriptors of the 4 rotations of each image and of its mirror image."""
    variants = []
    for oriented in (images, images[:, :, ::-1]):
        variants += [copy_descriptors(np.rot90(oriented, k, axes=(1, 2)), size) for k in range(4)]
    return np.stack(variants, axis=1)


def nearest_train(synthetic_feats: np.ndarray, train_feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each synthetic row, the index of the nearest training row and its cosine distance.

    Args:
        synthetic_feats: `(N, D)`, or `(N, T, D)` for T variants of each synthetic image (the
            8 dihedral transforms): the distance is then the minimum over variants.
        train_feats: `(M, D)`.

    Returns:
        `(idx, dist)`, both `(N,)`: `dist = 1 - cos` in [0, 2].
    """
    def unit(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)

    queries = unit(synthetic_feats)
    if queries.ndim == 2:
        queries = queries[:, None, :]
    n, variants, dim = queries.shape
    similarity = (queries.reshape(n * variants, dim) @ unit(train_feats).T).reshape(n, variants, -1).max(axis=1)
    index = similarity.argmax(axis=1)
    return index, np.clip(1.0 - similarity[np.arange(len(index)), index], 0.0, 2.0)


# ------------------------------------------------------------------ alignment distance

def _lowpass(images: np.ndarray, sigma: float, luma: bool = True) -> torch.Tensor:
    """uint8 `(N, H, W, 3)` -> float `(N, 3, 32, 32)`, area-resized, Gaussian-blurred
    (edges replicated); with `luma`, as luma and `CHROMA_WEIGHT` x chroma (YCbCr), else RGB."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if tensor.shape[-2:] != (DESCRIPTOR_SIZE, DESCRIPTOR_SIZE):
        tensor = F.adaptive_avg_pool2d(tensor, DESCRIPTOR_SIZE)
    radius = int(np.ceil(3 * sigma))
    taps = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    taps = (taps / taps.sum()).repeat(3, 1, 1, 1)
    tensor = F.pad(tensor, (radius,) * 4, mode="replicate")
    tensor = F.conv2d(tensor, taps.view(3, 1, 1, -1), groups=3)
    tensor = F.conv2d(tensor, taps.view(3, 1, -1, 1), groups=3)
    if not luma:
        return tensor
    mix = _YCBCR * torch.tensor([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT])[:, None]
    return torch.einsum("cd,ndhw->nchw", mix, tensor)


def _unit(windows: torch.Tensor) -> torch.Tensor:
    """`(..., 3, h, w)` -> `(..., 3*h*w)`: each channel's mean removed, unit norm."""
    flat = (windows - windows.mean(dim=(-2, -1), keepdim=True)).flatten(-3)
    return flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _dihedral(images: torch.Tensor) -> torch.Tensor:
    """`(N, C, h, w)` -> `(N, 8, C, h, w)`: the 4 rotations of each image and of its mirror image."""
    return torch.stack([torch.rot90(oriented, k, dims=(-2, -1))
                        for oriented in (images, images.flip(-1)) for k in range(4)], dim=1)


def _centre(images: torch.Tensor, size: int) -> torch.Tensor:
    offset = (images.shape[-1] - size) // 2
    return images[..., offset:offset + size, offset:offset + size]


def _window_similarity(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Best cosine similarity of any of query b's unit `(V, 3, w, w)` windows with any
    `w x w` window of each of its candidate images: queries `(B, V, 3, w, w)`, candidates
    `(B, K, 3, s, s)` -> `(B, K)`.

    The windows' dot products are one grouped convolution (a group per query); their norms
    (after removing each channel's mean) come from box sums of the image and of its square,
    so no window is materialised.
    """
    batch, variants, _, size, _ = queries.shape
    k, side = candidates.shape[1], candidates.shape[-1]
    stacked = candidates.transpose(0, 1).reshape(k, batch * 3, side, side)
    dots = F.conv2d(stacked, queries.reshape(batch * variants, 3, size, size), groups=batch)
    box = torch.ones(batch * 3, 1, size, size)
    total = F.conv2d(stacked, box, groups=batch * 3)
    squares = F.conv2d(stacked * stacked, box, groups=batch * 3)
    spread = (squares - total * total / size ** 2).view(k, batch, 3, *total.shape[-2:]).sum(dim=2)
    similarity = dots.view(k, batch, variants, *dots.shape[-2:]) / spread.clamp_min(1e-6).sqrt()[:, :, None]
    return similarity.flatten(2).amax(dim=2).T


def _aligned_distance(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Alignment distance of low-passed queries `(B, V, 3, 32, 32)` (V variants each) to
    their low-passed candidates `(B, K, 3, 32, 32)`: `(B, K)`."""
    windows = _unit(_centre(queries, WINDOW)).view(*queries.shape[:3], WINDOW, WINDOW)
    best = torch.full(candidates.shape[:2], -1.0)
    for size in ZOOM_SIZES:
        zoomed = candidates if size == DESCRIPTOR_SIZE else F.interpolate(
            candidates.flatten(0, 1), size=size, mode="bilinear", align_corners=False).view(
            *candidates.shape[:3], size, size)
        best = torch.maximum(best, _window_similarity(windows, zoomed))
    return (1.0 - best).clamp(0.0, 2.0)


def _coarse_windows(images: np.ndarray) -> torch.Tensor:
    """`(N, 25, D)` unit 12x12 windows of the sigma-2 low-pass at 16x16: the shortlist's bank."""
    small = F.avg_pool2d(_lowpass(images, COARSE_SIGMA, luma=False), 2)
    columns = F.unfold(small, 12).view(len(images), 3, 144, -1).permute(0, 3, 1, 2)
    return _unit(columns.reshape(len(images), -1, 3, 12, 12))


def _coarse_queries(images: np.ndarray) -> torch.Tensor:
    """`(N, 8, D)` unit central 12x12 coarse windows of each image's 8 flips/rotations."""
    small = F.avg_pool2d(_lowpass(images, COARSE_SIGMA, luma=False), 2)
    return _unit(_centre(_dihedral(small), 12))


# ------------------------------------------------------------------------ the index

@dataclass(frozen=True)
class CopyIndex:
    """Training images prepared for copy search: low-passed pixels, the shortlist's
    coarse windows, each image's copy threshold, and its distance to its nearest other
    training image (exact duplicates, closer than `DUPLICATE_DISTANCE`, not counted)."""

    pixels: torch.Tensor
    coarse: torch.Tensor
    thresholds: np.ndarray
    neighbour_distance: np.ndarray
    duplicates: int

    def shortlist(self, images: np.ndarray, exclude: np.ndarray | None = None, k: int = SHORTLIST) -> np.ndarray:
        """`(N, k)` training indices most similar to each image at the coarse scale;
        `exclude[i]` (a training index) is never listed for image i."""
        queries = _coarse_queries(images)
        available = len(self.coarse) - (exclude is not None)
        # Queries per chunk: the (chunk, M, 8, 25) similarity stays under ~32 M floats.
        chunk = max(1, SHORTLIST_FLOATS // (len(self.coarse) * queries.shape[1] * self.coarse.shape[1]))
        picked = []
        for start in range(0, len(images), chunk):
            similarity = torch.einsum("nvd,mgd->nmvg", queries[start:start + chunk], self.coarse).flatten(2).amax(dim=2)
            if exclude is not None:
                rows = torch.arange(len(similarity))
                similarity[rows, torch.as_tensor(exclude[start:start + chunk])] = -np.inf
            picked.append(similarity.topk(min(k, available), dim=1).indices)
        return torch.cat(picked).numpy() if picked else np.zeros((0, min(k, available)), dtype=np.int64)

    def distances(self, images: np.ndarray, candidates: np.ndarray, orientations: bool = True) -> np.ndarray:
        """`(N, K)` alignment distance of each image to each of its `(N, K)` candidates;
        `orientations=False` skips the flips/rotations (for copies known not to have any)."""
        low = _lowpass(images, LOWPASS_SIGMA)
        variants = _dihedral(low) if orientations else low[:, None]
        chunks = [_aligned_distance(variants[start:start + BATCH], self.pixels[candidates[start:start + BATCH]])
                  for start in range(0, len(images), BATCH)]
        return torch.cat(chunks).numpy() if chunks else np.zeros(candidates.shape)


def build_index(train: np.ndarray, margin: float = CALIBRATION_MARGIN,
                edits: Sequence[str] = CALIBRATION_EDITS, seed: int = 0) -> CopyIndex:
    """Index uint8 `(M, H, W, 3)` training images and calibrate each one's copy threshold:
    `margin` x the largest alignment distance from the image to its own copies under
    `edits` (random parts of the edits drawn from `seed` and the image's position, so the
    thresholds are reproducible), capped at `NEIGHBOUR_CAP` x its distance to its nearest
    other training image."""
    if len(train) == 0:
        raise ValueError("copy detection needs at least 1 training image")
    nothing = np.zeros(len(train))
    index = CopyIndex(_lowpass(train, LOWPASS_SIGMA), _coarse_windows(train), nothing, nothing, 0)
    own = np.arange(len(train))[:, None]
    radius = np.zeros(len(train))
    for number, name in enumerate(edits):
        copies = np.stack([copy_edits.apply(name, image, np.random.default_rng([seed, number, i]))
                           for i, image in enumerate(train)])
        radius = np.maximum(radius, index.distances(copies, own, orientations=False)[:, 0])
    neighbour, duplicates = np.full(len(train), np.inf), 0
    if len(train) > 1:
        others = index.distances(train, index.shortlist(train, exclude=np.arange(len(train))))
        duplicates = int((others.min(axis=1) <= DUPLICATE_DISTANCE).sum())
        neighbour = np.where(others > DUPLICATE_DISTANCE, others, np.inf).min(axis=1)
    thresholds = np.minimum(margin * radius, NEIGHBOUR_CAP * neighbour)
    return CopyIndex(index.pixels, index.coarse, thresholds, neighbour, duplicates)


@dataclass
class Nearest:
    """Per query: the training image it is nearest to relative to that image's threshold,
    the distance, that threshold, and the verdict."""

    index: np.ndarray
    distance: np.ndarray
    threshold: np.ndarray

    @property
    def near_copy(self) -> np.ndarray:
        return self.distance <= self.threshold


def nearest_copies(images: np.ndarray, index: CopyIndex, threshold: float | None = None,
                   exclude: np.ndarray | None = None) -> Nearest:
    """Audit uint8 `(N, H, W, 3)` images against an index. With `threshold=None` each
    training image's own calibrated threshold applies and the nearest training image is the
    one with the smallest distance/threshold ratio; with a number, that one threshold
    applies and the nearest is the one at the smallest distance."""
    candidates = index.shortlist(images, exclude)
    distance = index.distances(images, candidates)
    limits = index.thresholds[candidates] if threshold is None else np.full(candidates.shape, float(threshold))
    best = np.argmin(distance / np.maximum(limits, 1e-12), axis=1)
    rows = np.arange(len(images))
    return Nearest(candidates[rows, best], distance[rows, best], limits[rows, best])


# ------------------------------------------------------------------------ the audit

@dataclass
class CopyAudit:
    """Per synthetic image: nearest training image by alignment distance (and by feature
    distance when features were given), the threshold that applied, and whether it is a near
    copy. `threshold` summarises: the one given, or the median of the calibrated ones."""

    nearest_index: np.ndarray
    pixel_distance: np.ndarray
    threshold: float
    threshold_source: str
    train_nn_distance: np.ndarray
    near_copy: np.ndarray
    train_duplicates: int
    applied_threshold: np.ndarray
    feature_nearest_index: np.ndarray | None = None
    feature_distance: np.ndarray | None = None

    @property
    def copy_rate(self) -> float:
        return float(self.near_copy.mean()) if len(self.near_copy) else 0.0

    @property
    def closeness(self) -> np.ndarray:
        """Distance over the threshold that applied: <= 1 is a near copy; the order in which
        to show pairs, since thresholds differ between training images."""
        return self.pixel_distance / np.maximum(self.applied_threshold, 1e-12)


def find_copies(synthetic: np.ndarray, train: np.ndarray | CopyIndex, threshold: float | None = None,
                synthetic_features: np.ndarray | None = None,
                train_features: np.ndarray | None = None) -> CopyAudit:
    """Audit uint8 `(N, H, W, 3)` synthetic images against uint8 `(M, H, W, 3)` training
    images, or a prebuilt `CopyIndex` of them.

    Args:
        threshold: one alignment-distance threshold for every training image; `None` uses
            each training image's threshold calibrated on its own edited copies.
        synthetic_features, train_features: optional `(N, D)` / `(M, D)` features for the
            second-opinion feature cosine distance.
    """
    index = train if isinstance(train, CopyIndex) else build_index(train)
    found = nearest_copies(synthetic, index, threshold)
    if threshold is None:
        summary = float(np.median(index.thresholds))
        source = (f"auto: per training image, the smaller of {CALIBRATION_MARGIN:g} x the largest distance of its "
                  f"own copies under {', '.join(CALIBRATION_EDITS)} and {NEIGHBOUR_CAP:g} x its distance to the "
                  f"nearest other training image (median {summary:.4f})")
    else:
        summary, source = float(threshold), "given (--copy_threshold)"
    neighbours = index.neighbour_distance[np.isfinite(index.neighbour_distance)]
    audit = CopyAudit(found.index, found.distance, summary, source, neighbours, found.near_copy,
                      index.duplicates, found.threshold)
    if synthetic_features is not None and train_features is not None:
        audit.feature_nearest_index, audit.feature_distance = nearest_train(synthetic_features, train_features)
    return audit
