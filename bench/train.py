"""Training speed: the origin recipe's step against `train_ddpm.py`'s, same weights, same process.

The origin recipe (`DDPM_model.py` as its README describes it): batch 16, float32, NCHW,
`torch.optim.AdamW(lr=1e-5)` with torch's defaults, the epsilon-MSE loss on uniformly drawn
timesteps. Its images are handed over already decoded, as float tensors in memory (the
origin's DataLoader decodes files every epoch; leaving that out favours the origin).
"Ours" is `ddpm_lesion.train.loop.train_step` as `train_ddpm.py` runs it: an Accelerator at
`--mixed_precision` (bf16 by default here, what the README recommends), the UNet in
channels_last, fused AdamW, uint8 images cached on the device. EMA is left out of both.

Each repeat runs a few optimizer steps of each recipe in turn; reported: images/s (median,
min, max), the ratio, GFLOP/s counting a training step as 3 forward passes (forward +
backward) and its fraction of the measured peak of the step's precision (compute-bound
kernels timed in the same rounds), peak memory of one step; and, separately, one AdamW step
over the UNet's weights with each of torch's implementations (for-loop, foreach, fused).

    python bench/train.py                 # both sizes, ~4 min on 2 CPU cores
    python bench/train.py --size origin64 --steps 20 --repeats 5     # a GPU
"""

from __future__ import annotations

import argparse
import functools
import itertools
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from common import (
    DEMO_MODEL,
    PeakKernels,
    forward_gflop,
    interleave,
    markdown_table,
    origin_unet,
    peak_memory,
    run_sizes,
    spread,
)
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler

from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.train.loop import TrainConfig, build_model, build_optimizer, train_step

BATCH = 16


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "origin64", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per timed run (default: 10 tiny, "
                                                                  "1 origin64 on a CPU)")
    parser.add_argument("--mixed_precision", choices=[p.value for p in MixedPrecision], default="bf16",
                        help="ours: train_ddpm.py's --mixed_precision")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "ddpm-lesion-bench" / "train")
    return parser.parse_args()


class OriginStep:
    """The origin's training step."""

    def __init__(self, model_dir: Path, device: torch.device) -> None:
        self.unet = UNet2DModel.from_pretrained(model_dir / "unet").to(device).train()
        self.scheduler = DDPMScheduler.from_pretrained(model_dir / "scheduler")
        self.optimizer = torch.optim.AdamW(self.unet.parameters(), lr=1e-5)
        size = self.unet.config.sample_size
        self.images = torch.rand(64, 3, size, size, device=device) * 2 - 1
        self.device = device
        self.position = 0

    def __call__(self) -> None:
        clean = self.images[self.position:self.position + BATCH]
        self.position = (self.position + BATCH) % len(self.images)
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (BATCH,), device=self.device)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        loss = F.mse_loss(self.unet(noisy, timesteps).sample, noise)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()


class OurStep:
    """`train_ddpm.py`'s step, set up the way `training.train` sets it up."""

    def __init__(self, model_dir: Path, precision: str, work: Path) -> None:
        self.cfg = TrainConfig(pretrained_model_name_or_path=str(model_dir), output_dir=work, train_data_dir=work,
                               train_batch_size=BATCH, mixed_precision=MixedPrecision(precision), seed=0,
                               resolution=UNet2DModel.load_config(model_dir / "unet")["sample_size"])
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)
        unet, self.noise_scheduler, _ = build_model(self.cfg, None, self.accelerator.device)
        optimizer = build_optimizer(self.cfg, unet, self.accelerator.device)
        lr_scheduler = get_scheduler("constant", optimizer)
        self.unet, self.optimizer, self.lr_scheduler = self.accelerator.prepare(unet, optimizer, lr_scheduler)
        size = self.cfg.resolution
        self.images = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8, device=self.accelerator.device)
        self.steps = itertools.count()

    def __call__(self) -> None:
        train_step(self.cfg, self.accelerator, self.unet, self.optimizer, self.lr_scheduler, self.noise_scheduler,
                   self.images, None, next(self.steps))


def adamw_step_seconds(unet: torch.nn.Module, repeats: int, device: torch.device) -> dict[str, tuple]:
    """Seconds of one AdamW step over `unet`'s weights for each implementation torch offers
    (the per-tensor loop, foreach, fused), interleaved; (median, min, max) per implementation."""
    implementations = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    variants = {}
    for name, options in implementations.items():
        params = [torch.nn.Parameter(p.detach().clone()) for p in unet.parameters()]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        variants[name] = torch.optim.AdamW(params, lr=1e-5, **options).step
    return {name: spread(times) for name, times in interleave(variants, repeats, device.type).items()}


def run_steps(step: OriginStep | OurStep, steps: int) -> None:
    for _ in range(steps):
        step()


def bench_size(name: str, args: argparse.Namespace, device_name: str) -> dict:
    device, work = torch.device(device_name), args.work_dir / name
    if name == "tiny":
        model_dir = DEMO_MODEL
    else:
        model_dir = work / "model"
        if not (model_dir / "model_index.json").is_file():
            DDPMPipeline(unet=origin_unet(), scheduler=DDPMScheduler()).save_pretrained(model_dir)
    steps = args.steps or (10 if name == "tiny" or device.type == "cuda" else 1)
    recipes = {"origin": OriginStep(model_dir, device), "ours": OurStep(model_dir, args.mixed_precision, work)}
    peaks = PeakKernels(device.type)
    variants = {name: functools.partial(run_steps, step, steps) for name, step in recipes.items()}
    seconds = interleave({**variants, **peaks.variants}, args.repeats, device.type)
    peak = peaks.gflops(seconds)
    memory = {name: peak_memory(recipe, device) for name, recipe in recipes.items()}  # one step each
    gflop = forward_gflop(recipes["origin"].unet.eval())
    result = {"size": name, "params_M": sum(p.numel() for p in recipes["origin"].unet.parameters()) / 1e6,
              "gflop_per_forward": gflop, "steps_per_run": steps, "batch": BATCH, "peak_gflops": peak}
    for variant, precision in (("origin", "no"), ("ours", args.mixed_precision)):
        images_per_s = [steps * BATCH / t for t in seconds[variant]]
        median = spread(images_per_s)[0]
        peak_of = "bf16" if precision == "bf16" else "fp32"
        result[variant] = {"images_per_s": spread(images_per_s), "precision": precision,
                           "gflops": 3 * gflop * median, "fraction_of_peak": 3 * gflop * median / peak[peak_of],
                           "peak_of": peak_of,
                           "peak_memory_MB": memory[variant] / 2**20}
    result["speedup"] = result["ours"]["images_per_s"][0] / result["origin"]["images_per_s"][0]
    result["adamw_step_seconds"] = adamw_step_seconds(recipes["origin"].unet, args.repeats, device)
    return result


def report(results: list[dict], info: dict[str, str]) -> str:
    header = ["size", "recipe", "images/s median [min, max]", "ratio", "GFLOP/s (% of peak)", "peak memory MB"]
    rows = []
    for r in results:
        for variant in ("origin", "ours"):
            v = r[variant]
            median, low, high = v["images_per_s"]
            recipe = ("origin: fp32, NCHW, AdamW defaults" if variant == "origin" else
                      f"ours: train_step, {v['precision']}, channels_last, fused AdamW")
            rows.append([f"{r['size']} ({r['params_M']:.1f} M, batch {r['batch']}, {r['steps_per_run']} step(s)/run)",
                         recipe, f"{median:.2f} [{low:.2f}, {high:.2f}]",
                         "1.00" if variant == "origin" else f"{r['speedup']:.2f}×",
                         (f"{v['gflops']:.0f} ({100 * v['fraction_of_peak']:.0f}% of {v['peak_of']} "
                          f"{r['peak_gflops'][v['peak_of']]:.0f})"),
                         f"{v['peak_memory_MB']:.0f}"])
    optimizer_rows = [[r["size"], name, "{:.1f} [{:.1f}, {:.1f}]".format(*(1e3 * t for t in times))]
                      for r in results for name, times in r["adamw_step_seconds"].items()]
    return ("\n".join(f"{k}: {v}" for k, v in info.items()) + "\n\n" + markdown_table(header, rows) + "\n\n"
            + markdown_table(["size", "AdamW implementation", "ms per step median [min, max]"], optimizer_rows))


def main() -> None:
    run_sizes(parse_args(), bench_size, report)


if __name__ == "__main__":
    main()
