"""KID at every checkpoint, so "best checkpoint" means best images, not lowest loss.

The denoising loss of a fine-tune keeps falling while samples start to copy the few
hundred training images or drift from the real distribution, so the origin's "best =
lowest training loss" picks the wrong model. Here each checkpoint's EMA weights generate
a fixed-seed batch that is scored by KID (the `evaluate` command's metric, unbiased at
small N) against held-out real images; the best step is recorded in
`RUN/best_checkpoint.json`, kept by checkpoint rotation, and sampled with
`sample_ddpm.py --checkpoint best`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from ddpm_lesion.core import run_files
from ddpm_lesion.core.fileio import write_text_atomic
from ddpm_lesion.data.evaluation_sets import load_image_set
from ddpm_lesion.evaluate.features import Extractor, FeatureSpace, extract, resolve_extractors
from ddpm_lesion.evaluate.metrics import kid
from ddpm_lesion.model.pretrained import read_best
from ddpm_lesion.sample.samplers import SchedulerName, denoise, image_generators, initial_noise, make_scheduler


@dataclass(frozen=True)
class Score:
    step: int
    kid: float
    ci_low: float
    ci_high: float
    feature_space: str


class CheckpointValidator:
    """Real features computed once; `score` samples and measures one set of weights."""

    def __init__(self, real_dir: Path, resolution: int, num_images: int, features: FeatureSpace,
                 sampler: SchedulerName, inference_steps: int, seed: int, device: torch.device):
        extractors, self.warnings = resolve_extractors([features], device=str(device))
        self.extractor: Extractor = extractors[0]
        real = load_image_set("validation", real_dir, resolution)
        self.real_features = extract(self.extractor, real.pixels)
        self.num_images, self.sampler, self.inference_steps, self.seed = num_images, sampler, inference_steps, seed

    def score(self, unet: UNet2DModel, scheduler_config: dict, step: int,
              num_classes: int | None = None) -> Score:
        """KID of `num_images` fixed-seed samples (classes in turn for a conditional
        model) against the real validation images, with its subset interval."""
        size = unet.config.sample_size
        generators = image_generators(self.seed, range(self.num_images))
        noise = initial_noise(generators, (3, size, size)).to(unet.device)
        labels = (torch.arange(self.num_images, device=unet.device) % num_classes) if num_classes else None
        pixels = denoise(unet, make_scheduler(self.sampler, scheduler_config), noise, generators, self.inference_steps,
                         class_labels=labels).cpu().numpy()
        fake = extract(self.extractor, np.ascontiguousarray(pixels))
        subset = min(100, len(fake), len(self.real_features))
        estimate = kid(self.real_features, fake, subsets=50, subset_size=subset, seed=self.seed)
        return Score(step, estimate.mean, estimate.ci_low, estimate.ci_high, self.extractor.key)


def record(run_dir: Path, score: Score) -> bool:
    """Append to `validation.csv`; make `score` the best if its KID is lowest. Returns
    whether it became the best."""
    log = run_dir / run_files.VALIDATION_CSV
    header = "step,kid,ci_low,ci_high,feature_space\n"
    previous = log.read_text(encoding="utf-8") if log.is_file() else header
    rows = [r for r in previous.splitlines()[1:] if r and int(r.split(",")[0]) < score.step]  # redone after a resume
    rows.append(f"{score.step},{score.kid:.6g},{score.ci_low:.6g},{score.ci_high:.6g},{score.feature_space}")
    write_text_atomic(log, header + "\n".join(rows) + "\n")
    best = read_best(run_dir)
    if best is not None and best["step"] < score.step and best["kid"] <= score.kid:
        return False
    write_text_atomic(run_dir / run_files.BEST_CHECKPOINT, json.dumps(score.__dict__, indent=2))
    return True
