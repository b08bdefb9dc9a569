"""A better-trained tiny model for the sampler benchmarks: the bundled demo model, pretrained further.

The bundled model had 3,200 steps (`scripts/make_demo_assets.py`, 13 min on one core): enough
for `make demo`, too few for a fast sampler. How few steps a sampler needs depends on how
accurate the network is, so the evidence that `ddpm-lesion pick-sampler` moves a model to
fewer steps needs a model trained longer. This continues the demo model's own pretraining
(same procedural images, augmentation, objective and EMA warm-up, from
`scripts/make_demo_assets.py`) with bf16 autocast, a fresh cosine schedule over `--steps`,
and saves the EMA weights as a DDPMPipeline every `--save_every` steps to OUT-STEP.

    python bench/pretrain_longer.py --steps 16000 --save_every 4000 --output /tmp/tiny-long   # ~10 steps/s, 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import DEMO_MODEL, REPO
from diffusers import DDPMPipeline

sys.path.insert(0, str(REPO / "scripts"))
import make_demo_assets as demo  # noqa: E402  (the demo model's own pretraining pieces)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16000, help="optimizer steps of the cosine schedule")
    parser.add_argument("--save_every", type=int, default=4000)
    parser.add_argument("--output", type=Path, default=Path("/tmp/ddpm-lesion-bench/tiny-long"))
    parser.add_argument("--learning_rate", type=float, default=3e-4, help="peak; warm-up 50 steps, cosine to a tenth")
    parser.add_argument("--ema_max_decay", type=float, default=0.9995)
    parser.add_argument("--seed", type=int, default=12345)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    pipeline = DDPMPipeline.from_pretrained(DEMO_MODEL)
    unet, scheduler = pipeline.unet.train(), pipeline.scheduler
    images = demo.pretraining_set(0, 4096, unet.config.sample_size)  # the demo model's pretraining set
    ema = demo.build_unet(unet.config.sample_size)
    ema.load_state_dict(unet.state_dict())
    ema.requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.learning_rate, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(args.seed)
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = demo.learning_rate(step, args.learning_rate, 50, args.steps)
        clean = demo.augment(images[torch.randint(0, len(images), (16,), generator=generator)], generator)
        losses.append(demo.denoising_step(unet, ema, scheduler, optimizer, clean, generator, step, args.ema_max_decay,
                                          bf16=True))
        if (step + 1) % 500 == 0:
            print(f"step {step + 1} loss {np.mean(losses[-500:]):.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            DDPMPipeline(unet=ema, scheduler=scheduler).save_pretrained(f"{args.output}-{step + 1}",
                                                                         safe_serialization=True)


if __name__ == "__main__":
    main()
