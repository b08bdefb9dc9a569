"""Test helpers: tiny UNets saved with `save_pretrained` (the real loading path) and
small image folders written to temp dirs. Nothing here touches a hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def tiny_unet(sample_size: int = 16, seed: int = 0):
    """A ~20k-parameter UNet2DModel: big enough to exercise every code path, small
    enough that a training step takes milliseconds on a CPU."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
    )


def save_tiny_pipeline(path: Path, sample_size: int = 16, seed: int = 0) -> Path:
    """Write a DDPMPipeline folder (unet + scheduler, safetensors) and return its path."""
    from diffusers import DDPMPipeline, DDPMScheduler

    pipe = DDPMPipeline(unet=tiny_unet(sample_size, seed), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def write_images(folder: Path, n: int, size: int = 20, prefix: str = "ISIC_", seed: int = 0, ext: str = ".png") -> list[str]:
    """Write `n` random RGB images named `<prefix>%07d<ext>` and return their ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = []
    for i in range(n):
        image_id = f"{prefix}{i:07d}"
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{image_id}{ext}")
        ids.append(image_id)
    return ids


# `ddpm-lesion evaluate` flags small enough for tests.
EVALUATE_FAST = ["--resolution", "32", "--kid_subsets", "5", "--kid_subset_size", "10"]


def draw_folder(folder: Path, seed: int, n: int, prefix: str = "ISIC_") -> list[Path]:
    """`n` procedural 32 px lesions (alternately benign and malignant) named PREFIX<seed><i>.png."""
    from ddpm_lesion.data.demo_lesions import draw_lesion

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{seed}{i:05d}.png"
        draw_lesion(rng, 32, malignant=bool(i % 2)).save(path)
        paths.append(path)
    return paths
