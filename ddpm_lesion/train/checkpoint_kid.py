"""KID at every checkpoint, so "best checkpoint" means best images, not lowest loss.

The denoising loss of a fine-tune keeps falling while samples start to copy the few
hundred training images or drift from the real distribution, so the origin's "best =
lowest training loss" picks the wrong model. Here each checkpoint's EMA weights generate
a fixed-seed batch that is scored by KID (the `evaluate` command's metric, unbiased at
small N) against held-out real images, and audited for near copies of the training images
(`copy_detection`): a long fine-tune that starts to memorise shows as a rising copy rate
while KID may still improve. The best step — the lowest KID among checkpoints whose copy
rate is at most `--max_copy_rate` — is recorded in `RUN/best_checkpoint.json`, kept by
checkpoint rotation, and sampled with `sample_ddpm.py --checkpoint best`;
`RUN/validation.png` plots both against the step.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from ddpm_lesion.core import run_files
from ddpm_lesion.core.figures import figure_png, pyplot
from ddpm_lesion.core.fileio import write_bytes_atomic, write_text_atomic
from ddpm_lesion.data.evaluation_sets import load_image_set
from ddpm_lesion.evaluate.copy_detection import build_index, nearest_copies
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
    copy_rate: float  # share of the samples that are near copies of training images


class CheckpointValidator:
    """Real features computed once; `score` samples and measures one set of weights."""

    def __init__(self, real_dir: Path, resolution: int, num_images: int, features: FeatureSpace,
                 sampler: SchedulerName, inference_steps: int, seed: int, device: torch.device,
                 train_pixels: np.ndarray):
        """`train_pixels`: the training images, uint8 `(N, H, W, 3)`, indexed once for the copy audit."""
        self.copy_index = build_index(train_pixels)
        extractors, self.warnings = resolve_extractors([features], device=str(device))
        self.extractor: Extractor = extractors[0]
        real = load_image_set("validation", real_dir, resolution)
        self.real_features = extract(self.extractor, real.pixels)
        self.num_images, self.sampler, self.inference_steps, self.seed = num_images, sampler, inference_steps, seed

    def score(self, unet: UNet2DModel, scheduler_config: dict, step: int,
              num_classes: int | None = None) -> Score:
        """KID of `num_images` fixed-seed samples (classes in turn for a conditional
        model) against the real validation images, with its subset interval, and their
        copy rate against the training images."""
        size = unet.config.sample_size
        generators = image_generators(self.seed, range(self.num_images))
        noise = initial_noise(generators, (3, size, size)).to(unet.device)
        labels = (torch.arange(self.num_images, device=unet.device) % num_classes) if num_classes else None
        pixels = denoise(unet, make_scheduler(self.sampler, scheduler_config), noise, generators, self.inference_steps,
                         class_labels=labels).cpu().numpy()
        pixels = np.ascontiguousarray(pixels)
        fake = extract(self.extractor, pixels)
        subset = min(100, len(fake), len(self.real_features))
        estimate = kid(self.real_features, fake, subsets=50, subset_size=subset, seed=self.seed)
        copy_rate = float(nearest_copies(pixels, self.copy_index).near_copy.mean())
        return Score(step, estimate.mean, estimate.ci_low, estimate.ci_high, self.extractor.key, copy_rate)


HEADER = "step,kid,ci_low,ci_high,feature_space,copy_rate"


def record(run_dir: Path, score: Score, max_copy_rate: float) -> bool:
    """Append to `validation.csv` and redraw `validation.png`; make `score` the best if its
    copy rate is at most `max_copy_rate` and its KID is the lowest of those. Returns whether
    it became the best."""
    log = run_dir / run_files.VALIDATION_CSV
    previous = log.read_text(encoding="utf-8") if log.is_file() else HEADER + "\n"
    rows = [r for r in previous.splitlines()[1:] if r and int(r.split(",")[0]) < score.step]  # redone after a resume
    rows.append(f"{score.step},{score.kid:.6g},{score.ci_low:.6g},{score.ci_high:.6g},{score.feature_space},"
                f"{score.copy_rate:.6g}")
    write_text_atomic(log, HEADER + "\n" + "\n".join(rows) + "\n")
    write_bytes_atomic(run_dir / run_files.VALIDATION_PLOT, plot(log, max_copy_rate))
    if score.copy_rate > max_copy_rate:
        return False
    best = read_best(run_dir)
    if best is not None and best["step"] < score.step and best["kid"] <= score.kid:
        return False
    write_text_atomic(run_dir / run_files.BEST_CHECKPOINT, json.dumps(score.__dict__, indent=2))
    return True


def plot(log: Path, max_copy_rate: float) -> bytes:
    """KID and copy rate against the step, from `validation.csv` (rows written before the
    copy rate was recorded have none)."""
    with log.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    steps = [int(r[0]) for r in rows]
    figure, kid_axis = pyplot().subplots(figsize=(6, 3.5), dpi=100)
    kid_axis.errorbar(steps, [float(r[1]) for r in rows], fmt="o-", color="tab:blue", capsize=2,
                      yerr=[[float(r[1]) - float(r[2]) for r in rows], [float(r[3]) - float(r[1]) for r in rows]])
    kid_axis.set_xlabel("optimizer step")
    kid_axis.set_ylabel(f"KID ({rows[-1][4]})", color="tab:blue")
    copy_axis = kid_axis.twinx()
    copied = [(int(r[0]), 100 * float(r[5])) for r in rows if len(r) > 5]
    copy_axis.plot([s for s, _ in copied], [c for _, c in copied], "s--", color="tab:red", label="copy rate")
    copy_axis.axhline(100 * max_copy_rate, color="tab:red", alpha=0.3, label="--max_copy_rate")
    copy_axis.set_ylabel("near copies of training images (%)", color="tab:red")
    copy_axis.set_ylim(bottom=0)
    copy_axis.legend(fontsize=7, loc="upper right")
    return figure_png(figure)
