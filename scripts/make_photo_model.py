"""Pretrain the bundled starting model for real images: the demo UNet on crops of real photographs.

The bundled `ddpm-lesion-tiny-32` was pretrained on procedural cartoons, and fine-tuned on
real dermoscopy patches its prior shows through: blue, purple and yellow squares no real
skin has (issue 17). A real user starts from an ImageNet model, whose prior is natural-image
texture and colour. This script gives the same architecture that kind of prior without a
download: random 32x32 crops, at several scales, of the public-domain/CC photographs that
ship inside installed PyPI packages (scikit-image's `skimage.data`, scikit-learn's sample
images, matplotlib's sample data; see PHOTOS for each one's licence).

Never any dermoscopy or other skin-lesion image: the model must not have seen the
evaluation domain (`../shared/data/ph2-dev` is what fine-tunes are measured on).

The training loop, UNet, EMA, learning-rate schedule and dihedral augmentation are
`scripts/make_demo_assets.py`'s, so the two bundled models differ only in their data.

    pip install -e '.[assets]'
    OMP_NUM_THREADS=1 python scripts/make_photo_model.py --max_train_steps 8000   # 35 min on 1 CPU core
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_demo_assets as demo  # noqa: E402  (the demo model's architecture and training pieces)

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "ddpm-lesion-tiny-32-photos"


@dataclass(frozen=True)
class Photo:
    package: str  # the installed package that ships the file
    relative: str  # path inside the package
    licence: str


# Colour photographs and CC0 textures with a stated licence that allows redistribution of
# derived weights. Left out on purpose: skimage's retina.jpg and microaneurysms.png
# (medical images, too close to the evaluation domain) and images without a stated licence.
PHOTOS = [
    Photo("skimage", "data/astronaut.png", "public domain (NASA)"),
    Photo("skimage", "data/coffee.png", "CC0 (Rachel Michetti)"),
    Photo("skimage", "data/chelsea.png", "CC0 (Stefan van der Walt)"),
    Photo("skimage", "data/rocket.jpg", "public domain (SpaceX)"),
    Photo("skimage", "data/brick.png", "CC0 (cc0textures.com)"),
    Photo("skimage", "data/grass.png", "CC0 (DeviantArt, linolafett)"),
    Photo("skimage", "data/gravel.png", "CC0 (cc0textures.com)"),
    Photo("sklearn", "datasets/images/china.jpg", "CC BY 2.0 (danielbuechele, Flickr)"),
    Photo("sklearn", "datasets/images/flower.jpg", "CC BY 2.0 (vultilion, Flickr)"),
    Photo("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy)"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "demo" / "pretrained" / MODEL_NAME)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_crops", type=int, default=32768, help="random crops drawn once, then reused")
    parser.add_argument("--max_scale", type=float, default=8.0,
                        help="photos are shrunk by a log-uniform factor in [1, max_scale] before cropping, so "
                             "crops show texture at several scales")
    parser.add_argument("--max_train_steps", type=int, default=6000)
    parser.add_argument("--save_every", type=int, default=2000, help="also save OUTPUT-STEP snapshots")
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--ema_max_decay", type=float, default=0.999)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own). On a machine shared with other jobs use 1 "
                             "(or OMP_NUM_THREADS=1): two OpenMP threads spin at barriers while their partner "
                             "waits for a core, which made steps ~30x slower here")
    return parser.parse_args(argv)


def photo_path(photo: Photo) -> Path | None:
    spec = importlib.util.find_spec(photo.package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / photo.relative
    return path if path.is_file() else None


def load_photos() -> tuple[list[np.ndarray], list[Photo]]:
    """The available photos as RGB uint8 arrays; says which packages to install if none are."""
    arrays, used = [], []
    for photo in PHOTOS:
        path = photo_path(photo)
        if path is not None:
            arrays.append(np.asarray(Image.open(path).convert("RGB")))
            used.append(photo)
    if not arrays:
        raise SystemExit("no photographs found: pip install -e '.[assets]' (scikit-image, scikit-learn)")
    return arrays, used


def random_crops(photos: list[np.ndarray], num_crops: int, size: int, max_scale: float,
                 seed: int) -> torch.Tensor:
    """(N, 3, size, size) uint8 crops: a random photo, shrunk by a random factor (box filter,
    so no aliasing), a random window. Photos are picked in proportion to their area."""
    rng = np.random.default_rng([seed, 0xC809])
    areas = np.array([p.shape[0] * p.shape[1] for p in photos], dtype=float)
    out = np.empty((num_crops, size, size, 3), dtype=np.uint8)
    pil = [Image.fromarray(p) for p in photos]
    for i in range(num_crops):
        k = rng.choice(len(photos), p=areas / areas.sum())
        scale = float(np.exp(rng.uniform(0.0, np.log(max_scale))))
        w, h = pil[k].size
        width, height = max(size, round(w / scale)), max(size, round(h / scale))
        small = pil[k].resize((width, height), Image.Resampling.BOX) if scale > 1.0 else pil[k]
        left, top = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        out[i] = np.asarray(small.crop((left, top, left + size, top + size)))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def pretrain(crops: torch.Tensor, args: argparse.Namespace) -> tuple[DDPMPipeline, list[float], float]:
    """The demo model's recipe (plain DDPM epsilon-MSE, AdamW, warm-up + cosine, EMA, flips
    and quarter turns) under bf16 autocast, saving the EMA as a pipeline every `save_every`."""
    torch.manual_seed(args.seed)
    unet = demo.build_unet()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
    ema = demo.build_unet()
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(args.seed * 1000 + demo.TRAIN_STREAM)
    losses, start = [], time.perf_counter()
    for step in range(args.max_train_steps):
        for group in optimizer.param_groups:
            group["lr"] = demo.learning_rate(step, args.learning_rate, args.lr_warmup_steps, args.max_train_steps)
        index = torch.randint(0, len(crops), (args.train_batch_size,), generator=generator)
        clean = demo.augment(crops[index].float() / 127.5 - 1.0, generator)
        losses.append(demo.denoising_step(unet, ema, scheduler, optimizer, clean, generator, step, args.ema_max_decay,
                                          bf16=True))
        if (step + 1) % 200 == 0:
            print(f"step {step + 1}/{args.max_train_steps} loss(last 200) {np.mean(losses[-200:]):.4f} "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
        if (step + 1) % args.save_every == 0 and step + 1 < args.max_train_steps:
            DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(f"{args.output}-{step + 1}",
                                                                         safe_serialization=True)
    return DDPMPipeline(unet=ema, scheduler=scheduler), losses, time.perf_counter() - start


def model_card(args: argparse.Namespace, command: str, used: list[Photo], losses: list[float],
               seconds: float, num_params: int) -> str:
    photos = "\n".join(f"| `{p.package}/{p.relative}` | {p.licence} |" for p in used)
    return f"""# {MODEL_NAME}

The bundled demo UNet (1.1 M parameters, 32x32, same architecture and noise schedule as
`ddpm-lesion-tiny-32`) pretrained on **random crops of real photographs** instead of
procedural cartoons: a starting point for fine-tuning on a few hundred real images
(measured against the cartoon start in BENCHMARKS.md, "Fine-tuning on real texture").
Its prior is natural-image texture and colour, the kind of prior a real user's
photo-pretrained DDPM (e.g. `google/ddpm-cifar10-32`) brings, at a size that fine-tunes
on a CPU in minutes.

**No dermoscopy, skin-lesion or other medical image was used** (the evaluation data of the
project's quality benchmark, PH2 patches, never touched it). Research use only; never clinical.

## How it was made

```
{command}
```

{args.num_crops} crops of 32x32 px, each from a photo picked in proportion to its area,
shrunk by a log-uniform factor in [1, {args.max_scale:g}] (box filter), at a random position
(seed {args.seed}). Photos, as shipped in installed PyPI packages:

| file | licence (as stated by the package) |
|---|---|
{photos}

| | |
|---|---|
| parameters | {num_params:,} |
| objective | DDPM epsilon-prediction MSE, uniform t, linear betas 1e-4 to 0.02, 1000 steps, `clip_sample=True` |
| optimiser | AdamW, peak lr {args.learning_rate:g}, weight decay 0.01, {args.lr_warmup_steps} warm-up steps then cosine to lr/10, grad-norm clip 1.0, bf16 autocast |
| batch / steps | {args.train_batch_size} / {len(losses)} (random flips and quarter turns) |
| weights saved | EMA (max decay {args.ema_max_decay}), fp32 safetensors |
| final loss | {np.mean(losses[-200:]):.4f} (mean of the last 200 steps) |
| training time | {seconds / 60:.1f} min wall-clock, {args.threads or torch.get_num_threads()} CPU threads (shared machine) |

## Licence

Weights: Apache-2.0, as the project. The CC BY 2.0 photographs above are credited here.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    photos, used = load_photos()
    crops = random_crops(photos, args.num_crops, 32, args.max_scale, args.seed)
    print(f"{len(crops)} crops from {len(used)} photographs", flush=True)
    pipeline, losses, seconds = pretrain(crops, args)
    if args.output.exists():
        shutil.rmtree(args.output)
    pipeline.save_pretrained(args.output, safe_serialization=True)
    command = shlex.join(["python", "scripts/make_photo_model.py", *argv])
    num_params = sum(p.numel() for p in pipeline.unet.parameters())
    (args.output / "README.md").write_text(model_card(args, command, used, losses, seconds, num_params))
    print(f"wrote {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
