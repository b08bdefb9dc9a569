"""Make the bundled demo assets: a small procedural lesion dataset and a small pretrained DDPM.

`make demo` has to run train -> sample on a fresh machine with no internet in a few
minutes on a laptop CPU, so the project ships its own stand-ins for the two things the
real tool downloads:

* `demo/data/`: ~100 procedurally drawn lesion images (`ddpm_lesion.data.demo_lesions`) with a
  `labels.csv` in the ISIC 2020 layout, so the demo exercises the same loader as real data.
* `demo/pretrained/ddpm-lesion-tiny-32/`: a ~1 M-parameter `UNet2DModel` + `DDPMScheduler`
  saved as a `DDPMPipeline` folder (safetensors), pretrained with a plain DDPM epsilon-MSE
  loop (Ho et al. 2020, Alg. 1) on a separate, larger and more varied procedural set. It
  stands in for a real checkpoint such as `google/ddpm-cifar10-32`: the demo fine-tunes it
  exactly as the real tool fine-tunes that model.

The pretraining images come from a different seed stream than the demo images, so the
demo really is fine-tuning on unseen data. Everything is seeded and runs on one CPU thread,
so a rerun with the same arguments reproduces the files (up to torch-version drift in
floating point).
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from PIL import Image

from ddpm_lesion.data.demo_lesions import draw_lesion

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "ddpm-lesion-tiny-32"
ISIC_2020_HEADER = [
    "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
    "diagnosis", "benign_malignant", "target",
]
# Sites as spelled in the ISIC 2020 metadata, roughly in their frequency order there.
SITES = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles", "oral/genital"]
SITE_WEIGHTS = [0.5, 0.25, 0.15, 0.06, 0.02, 0.02]
# Seed streams: the demo images and the pretraining images never share a generator.
DEMO_STREAM, PRETRAIN_STREAM, TRAIN_STREAM = 0, 1, 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Write the bundled demo dataset (demo/data: procedural lesion PNGs + an ISIC 2020-style "
            "labels.csv) and pretrain the bundled tiny DDPM (demo/pretrained/" + MODEL_NAME + "). "
            "The defaults reproduce the committed files; pretraining takes 10-15 minutes on one CPU thread."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output_dir", type=Path, default=REPO / "demo", help="where data/ and pretrained/ go")
    parser.add_argument("--seed", type=int, default=0, help="root seed for every image, the weights and the noise")
    parser.add_argument("--num_images", type=int, default=96, help="demo dataset size")
    parser.add_argument("--malignant_fraction", type=float, default=1 / 3, help="share of melanoma-like demo images")
    parser.add_argument("--image_size", type=int, default=48,
                        help="demo image size; larger than the model's 32 px so the demo exercises resizing")
    parser.add_argument("--pretrain_images", type=int, default=4096, help="procedural images in the pretraining set")
    parser.add_argument("--max_train_steps", type=int, default=3200, help="pretraining optimiser steps")
    parser.add_argument("--train_batch_size", type=int, default=16,
                        help="small batches, more steps: at this scale steps buy more than batch size")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="peak AdamW learning rate")
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--ema_max_decay", type=float, default=0.999, help="the saved weights are this EMA")
    parser.add_argument("--data_only", action="store_true", help="write demo/data and skip pretraining")
    args = parser.parse_args(argv)
    if not 0.0 < args.malignant_fraction < 1.0:
        parser.error("--malignant_fraction must be between 0 and 1")
    return args


def stream_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """One generator per image, keyed by (seed, stream, index), so an image depends only on
    its own key and the demo and pretraining sets can never overlap."""
    return np.random.default_rng([seed, stream, index])


# --- demo dataset -------------------------------------------------------------------------


def demo_labels(rng: np.random.Generator, num_images: int, malignant_fraction: float) -> list[dict[str, str]]:
    """Fake ISIC 2020 metadata rows: several images per patient (as in the real set, where
    patient-level splits matter), per-patient sex and age, per-image site and class."""
    num_malignant = round(num_images * malignant_fraction)
    targets = rng.permutation(np.r_[np.ones(num_malignant, int), np.zeros(num_images - num_malignant, int)])
    rows: list[dict[str, str]] = []
    patient = 0
    while len(rows) < num_images:
        sex = str(rng.choice(["male", "female"]))
        age = float(rng.integers(5, 17) * 5)
        for _ in range(min(int(rng.integers(1, 6)), num_images - len(rows))):
            target = int(targets[len(rows)])
            rows.append({
                "image_name": f"ISIC_{9000000 + len(rows):07d}",
                "patient_id": f"IP_{9000000 + patient:07d}",
                "sex": sex,
                "age_approx": f"{age:.1f}",
                "anatom_site_general_challenge": str(rng.choice(SITES, p=SITE_WEIGHTS)),
                "diagnosis": "melanoma" if target else "nevus",
                "benign_malignant": "malignant" if target else "benign",
                "target": str(target),
            })
        patient += 1
    return rows


def write_demo_data(data_dir: Path, seed: int, num_images: int, image_size: int, malignant_fraction: float) -> None:
    """Write `images/ISIC_9xxxxxx.png` and `labels.csv`, replacing any previous demo data."""
    images_dir = data_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    images_dir.mkdir(parents=True)
    rows = demo_labels(np.random.default_rng([seed, DEMO_STREAM]), num_images, malignant_fraction)
    for index, row in enumerate(rows):
        image = draw_lesion(stream_rng(seed, DEMO_STREAM, index), image_size, malignant=row["target"] == "1")
        image.save(images_dir / f"{row['image_name']}.png", optimize=True)
    with open(data_dir / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ISIC_2020_HEADER, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


# --- pretraining ----------------------------------------------------------------------------


def build_unet(sample_size: int = 32) -> UNet2DModel:
    """~1.1 M parameters, attention only at 8x8: attention at 16x16 nearly doubles the CPU
    step time for no visible gain on these images."""
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )


def pretraining_set(seed: int, num_images: int, size: int) -> torch.Tensor:
    """Both classes, half each, with `varied` backgrounds, as an (N, 3, size, size) tensor
    in [-1, 1], the range the DDPM forward process assumes."""
    arrays = [
        np.asarray(draw_lesion(stream_rng(seed, PRETRAIN_STREAM, i), size, malignant=i % 2 == 1, varied=True))
        for i in range(num_images)
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip and quarter turn (one per batch; batches are random anyway): a skin
    lesion has no up or left."""
    if torch.rand((), generator=generator) < 0.5:
        batch = batch.flip(-1)
    quarter_turns = int(torch.randint(0, 4, (), generator=generator))
    return torch.rot90(batch, quarter_turns, dims=(-2, -1))


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


@torch.no_grad()
def update_ema(ema: UNet2DModel, model: UNet2DModel, step: int, max_decay: float) -> None:
    """EMA with the usual (1 + step) / (10 + step) warm-up, so early random weights fade fast."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema.parameters(), model.parameters()):
        ema_param.lerp_(param, 1.0 - decay)


@dataclass
class PretrainResult:
    ema_unet: UNet2DModel
    losses: list[float]
    seconds: float


def denoising_step(unet: UNet2DModel, ema: UNet2DModel, scheduler: DDPMScheduler, optimizer: torch.optim.Optimizer,
                   clean: torch.Tensor, generator: torch.Generator, step: int, ema_max_decay: float,
                   bf16: bool = False) -> float:
    """One optimiser step of the plain DDPM objective on `clean` (noise and t drawn from
    `generator`), then the EMA update; the loss. Shared by every bundled model's recipe
    (this script, scripts/make_photo_model.py, bench/pretrain_longer.py) so they differ only
    in their data; `bf16` autocasts the forward pass."""
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(clean),), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        prediction = unet(scheduler.add_noise(clean, noise, timesteps), timesteps).sample
    loss = F.mse_loss(prediction.float(), noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    optimizer.step()
    update_ema(ema, unet, step, ema_max_decay)
    return loss.item()


def pretrain(
    unet: UNet2DModel, scheduler: DDPMScheduler, images: torch.Tensor, args: argparse.Namespace
) -> PretrainResult:
    """The plain DDPM objective: uniform t, Gaussian noise, MSE on the predicted noise."""
    generator = torch.Generator().manual_seed(args.seed * 1000 + TRAIN_STREAM)
    ema = build_unet(unet.config.sample_size)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=1e-2)
    losses: list[float] = []
    start = time.perf_counter()
    unet.train()
    for step in range(args.max_train_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.learning_rate, args.lr_warmup_steps, args.max_train_steps)
        index = torch.randint(0, len(images), (args.train_batch_size,), generator=generator)
        clean = augment(images[index], generator)
        losses.append(denoising_step(unet, ema, scheduler, optimizer, clean, generator, step, args.ema_max_decay))
        if (step + 1) % 100 == 0:
            elapsed = time.perf_counter() - start
            recent = np.mean(losses[-100:])
            print(f"step {step + 1}/{args.max_train_steps}  loss(last 100) {recent:.4f}  {elapsed:.0f}s", flush=True)
    return PretrainResult(ema, losses, time.perf_counter() - start)


# --- checking and documenting the model ---------------------------------------------------------


def render_samples(model_dir: Path, path: Path, seed: int, steps: int = 25) -> None:
    """Reload the saved folder the way users will and draw a 4x4 grid with DDIM, as a visual
    check that the weights produce lesions rather than noise."""
    pipeline = DDPMPipeline.from_pretrained(model_dir, use_safetensors=True)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=16, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                      output_type="np").images
    tiles = (np.clip(images, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    size = tiles.shape[1]
    grid = tiles.reshape(4, 4, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(4 * size, 4 * size, 3)
    Image.fromarray(grid).resize((8 * size, 8 * size), Image.Resampling.NEAREST).save(path, optimize=True)


def model_card(args: argparse.Namespace, command: str, num_params: int, result: PretrainResult) -> str:
    """The README.md saved next to the weights: what the model is and exactly how it was made."""
    losses = result.losses
    checkpoints = sorted({min(len(losses), s) for s in (100, 400, 800, len(losses) // 2, len(losses))})
    loss_rows = "\n".join(f"| {s} | {np.mean(losses[max(0, s - 100):s]):.4f} |" for s in checkpoints)
    return f"""# {MODEL_NAME}

A tiny unconditional pixel-space DDPM (diffusers `DDPMPipeline`: `UNet2DModel` +
`DDPMScheduler`) that ships with ddpm-lesion so that `make demo` can run
pretrained → fine-tune → sample offline on a CPU in minutes.

**It is a stand-in for `google/ddpm-cifar10-32`**, the kind of model the real tool
fine-tunes. It was never trained on any real image: its "pretraining" set is
{args.pretrain_images} procedurally drawn, lesion-like 32×32 images of both classes
(`ddpm_lesion.data.demo_lesions.draw_lesion(..., varied=True)`), from a seed stream disjoint from
the bundled demo dataset in `demo/data/`. It knows roughly what a pigmented blob on skin
looks like and nothing else. Research/demo use only; never clinical.

## How it was made

```
{command}
```

(run from the repository root after `make install`; it uses one CPU thread). The same
command also rewrites `demo/data/`.

| | |
|---|---|
| parameters | {num_params:,} |
| architecture | `UNet2DModel`, channels (32, 64, 64), 1 ResNet layer per block, self-attention at 8×8 only, GroupNorm(8); see `unet/config.json` |
| resolution | 32×32 RGB, pixel values in [-1, 1] |
| objective | DDPM epsilon-prediction MSE, uniform t (Ho et al. 2020, Alg. 1) |
| scheduler | `DDPMScheduler`, 1000 steps, linear betas 1e-4 → 0.02, `prediction_type="epsilon"` |
| optimiser | AdamW, peak lr {args.learning_rate:g}, weight decay 0.01, {args.lr_warmup_steps} warm-up steps then cosine to lr/10, grad-norm clip 1.0 |
| batch / steps | {args.train_batch_size} / {len(losses)} (random flips and quarter turns) |
| weights saved | EMA (max decay {args.ema_max_decay}), fp32 safetensors |
| final loss | {np.mean(losses[-100:]):.4f} (training MSE, mean of the last 100 steps) |
| training time | {result.seconds / 60:.1f} min wall-clock on 1 CPU thread |
| seed | {args.seed} |

Training loss (mean of the 100 steps up to each step):

| step | loss |
|---|---|
{loss_rows}

`samples.png`: 16 samples from this folder with `DDIMScheduler`, 25 steps, seed {args.seed}.

## Sampling: use DDPM or DDIM, not DPM-Solver++ or UniPC

Sample with `DDPMScheduler` (ancestral, ~100 steps gives the cleanest images) or
`DDIMScheduler` (25-50 steps), both configured from `scheduler/scheduler_config.json`, whose
`clip_sample=True` clips each step's estimate of the clean image to [-1, 1]. Samplers that
do not clip (DPM-Solver++, UniPC, DDIM with `clip_sample=False`) turn this small model's
images into coloured noise: near t = 999 the clean-image estimate divides the noise
prediction's error by sqrt(alpha_bar) ~ 0.006, and a model this small and this briefly
trained is not accurate enough for that. Long-trained models such as
`google/ddpm-cifar10-32` should be (not measured here).

## Licence

Made by the ddpm-lesion project from procedurally generated images; no third-party data or
weights are involved. Distributed under the project's licence (Apache-2.0).
"""


def make_model(args: argparse.Namespace, command: str, model_dir: Path) -> None:
    """Pretrain, save the EMA weights as a DDPMPipeline folder, then check and document it."""
    torch.manual_seed(args.seed)
    unet = build_unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    images = pretraining_set(args.seed, args.pretrain_images, unet.config.sample_size)
    num_params = sum(p.numel() for p in unet.parameters())
    print(f"pretraining {num_params:,} parameters on {len(images)} procedural images", flush=True)
    result = pretrain(unet, scheduler, images, args)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    DDPMPipeline(unet=result.ema_unet, scheduler=scheduler).save_pretrained(model_dir, safe_serialization=True)
    render_samples(model_dir, model_dir / "samples.png", args.seed)
    (model_dir / "README.md").write_text(model_card(args, command, num_params, result))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "scripts/make_demo_assets.py", *argv])
    torch.set_num_threads(1)
    write_demo_data(args.output_dir / "data", args.seed, args.num_images, args.image_size, args.malignant_fraction)
    print(f"wrote {args.num_images} demo images to {args.output_dir / 'data'}", flush=True)
    if not args.data_only:
        make_model(args, command, args.output_dir / "pretrained" / MODEL_NAME)
        print(f"wrote {args.output_dir / 'pretrained' / MODEL_NAME}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
