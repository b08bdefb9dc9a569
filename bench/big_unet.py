"""The 114 M UNet of `google/ddpm-ema-church-256` fine-tuned at 128 px: seconds and peak memory
per training step and per sampled image, and the largest batch expected to fit on a GPU.

Each configuration runs in a fresh subprocess, so its peak resident memory
(`ru_maxrss`) is its own: model, gradients, AdamW state, activations, and the Python and
torch libraries. The training step is `ddpm_lesion.train.loop.train_step` as `train_ddpm.py`
runs it (Accelerate at `--mixed_precision`, channels_last, fused AdamW, uint8 images on the
device), on the exact church-256 architecture (tests/hub_models.py) with random weights
(built through `--model_config`, which times the same as pretrained ones). Per configuration:
one untimed warm-up step, then `--repeats` timed steps; the median, min and max are reported.
Sampling times the network in `ddpm_lesion.sample.samplers.denoise` (bf16 autocast, channels_last,
batch `--sample_batch`) for `--sample_steps` DDPM steps and scales to DDPM-50 per image.

GPU batch estimates: per-image activation memory is the slope of peak memory over batch
(bf16, from the CPU runs); the fixed part on a GPU is weights + gradients + two AdamW moments
+ an EMA copy (fp32, 5 x 4 bytes per parameter) + 1.5 GiB for the CUDA context and cuDNN
workspace, and 10% of the card is left free. Estimates until a GPU measures them.

    python bench/big_unet.py                        # ~10 min on 2 CPU cores
    python bench/big_unet.py --batches 1 --repeats 1 --sample_steps 1     # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, markdown_table, spread

sys.path.insert(0, str(REPO / "tests"))
from tests.hub_models import CHURCH_256_UNET  # noqa: E402  the Hub's exact config (a test fixture, plain data)

RESOLUTION = 128
GPU_GIB = (16, 24, 40, 80)
CUDA_OVERHEAD_GIB = 1.5
FIXED_BYTES_PER_PARAM = 5 * 4  # fp32 weights, gradients, AdamW exp_avg and exp_avg_sq, EMA


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per configuration (after a warm-up)")
    parser.add_argument("--fp32_batches", type=int, nargs="*", default=[1, 4],
                        help="also time fp32 (no gradient checkpointing) at these batches, for the bf16 ratio")
    parser.add_argument("--sample_batch", type=int, default=4)
    parser.add_argument("--sample_steps", type=int, default=2, help="DDPM steps timed (scaled to 50)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "ddpm-lesion-bench" / "big")
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


# ------------------------------------------------------------------ one configuration, in a subprocess


def child(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    work = Path(spec["work_dir"])
    config = work / "church-256-at-128.json"
    result = train_child(spec, config, work, torch) if spec["mode"] == "train" else sample_child(spec, config, torch)
    return {**result, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # KiB on Linux


def train_child(spec: dict, config: Path, work: Path, torch) -> dict:
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from ddpm_lesion.train.loop import MixedPrecision, TrainConfig, build_model, build_optimizer, train_step

    cfg = TrainConfig(model_config=str(config), output_dir=work, train_data_dir=work, resolution=RESOLUTION,
                      train_batch_size=spec["batch"], mixed_precision=MixedPrecision(spec["precision"]),
                      gradient_checkpointing=spec["checkpointing"], seed=0)
    accelerator = Accelerator(cpu=True, mixed_precision=spec["precision"])
    unet, noise_scheduler, _ = build_model(cfg, None, accelerator.device)
    optimizer = build_optimizer(cfg, unet, accelerator.device)
    lr_scheduler = get_scheduler("constant", optimizer)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    images = torch.randint(0, 256, (16, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8)
    seconds = []
    for step in range(spec["repeats"] + 1):  # step 0 warms up (and allocates the AdamW state)
        start = time.perf_counter()
        train_step(cfg, accelerator, unet, optimizer, lr_scheduler, noise_scheduler, images, None, step)
        if step:
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "params": sum(p.numel() for p in unet.parameters())}


def sample_child(spec: dict, config: Path, torch) -> dict:
    from diffusers import DDPMScheduler

    from ddpm_lesion.model.unet_presets import unet_from_config
    from ddpm_lesion.sample.samplers import SchedulerName, denoise, image_generators, initial_noise, make_scheduler

    torch.manual_seed(0)
    unet = unet_from_config(str(config)).eval().to(memory_format=torch.channels_last)
    scheduler = make_scheduler(SchedulerName.DDPM, DDPMScheduler(num_train_timesteps=1000).config)
    seconds = []
    for repeat in range(spec["repeats"] + 1):
        generators = image_generators(repeat, range(spec["batch"]))
        noise = initial_noise(generators, (3, RESOLUTION, RESOLUTION))
        start = time.perf_counter()
        denoise(unet, scheduler, noise, generators, spec["steps"], autocast_dtype=torch.bfloat16)
        if repeat:
            seconds.append(time.perf_counter() - start)
    return {"seconds": seconds}


def run_child(spec: dict) -> dict:
    """One configuration in a fresh interpreter; its result plus its peak RSS."""
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO / "bench")
    if done.returncode:
        raise RuntimeError(f"{spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ the parent: all configurations, the table


def gpu_estimates(rows: list[dict], params: int) -> list[list[str]]:
    """Largest batch per GPU size from the bf16 memory slope over batch (per gradient-checkpointing setting)."""
    table = []
    for checkpointing in (False, True):
        points = sorted((r["batch"], r["peak_rss_gib"]) for r in rows
                        if r["precision"] == "bf16" and r["checkpointing"] == checkpointing)
        if len(points) < 2:
            continue
        slope = statistics.linear_regression([b for b, _ in points], [m for _, m in points]).slope
        fixed = params * FIXED_BYTES_PER_PARAM / 2**30 + CUDA_OVERHEAD_GIB
        fits = [max(0, int((0.9 * gib - fixed) / slope)) for gib in GPU_GIB]
        table.append([f"bf16, gradient checkpointing {'on' if checkpointing else 'off'}", f"{slope:.2f}",
                      f"{fixed:.1f}", *(f"~{n}" for n in fits)])
    return table


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "church-256-at-128.json").write_text(json.dumps({**CHURCH_256_UNET, "sample_size": RESOLUTION}))
    info = machine()
    base = {"threads": args.threads, "work_dir": str(args.work_dir), "repeats": args.repeats}
    configs = [dict(base, mode="train", batch=b, precision="bf16", checkpointing=c)
               for c in (False, True) for b in args.batches]
    configs += [dict(base, mode="train", batch=b, precision="no", checkpointing=False) for b in args.fp32_batches]
    configs.append(dict(base, mode="sample", batch=args.sample_batch, steps=args.sample_steps))
    rows, started = [], time.perf_counter()
    for spec in configs:
        result = run_child(spec)
        rows.append({**spec, **result})
        print(f"{spec['mode']} batch {spec['batch']} {spec.get('precision', 'bf16')} "
              f"checkpointing={spec.get('checkpointing')}: {spread(result['seconds'])} s, "
              f"{result['peak_rss_gib']:.2f} GiB", flush=True)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    info["wall seconds"] = f"{time.perf_counter() - started:.0f}"
    train_rows = [r for r in rows if r["mode"] == "train"]
    params = train_rows[0]["params"]
    lines = [f"machine: {json.dumps(info)}", f"parameters: {params:,}", "",
             markdown_table(["precision", "gradient checkpointing", "batch", "s/step median [min, max]", "s/image",
                             "peak RSS GiB"],
                            [[r["precision"] if r["precision"] == "bf16" else "fp32",
                              "on" if r["checkpointing"] else "off", str(r["batch"]),
                              "{:.2f} [{:.2f}, {:.2f}]".format(*spread(r["seconds"])),
                              f"{spread(r['seconds'])[0] / r['batch']:.2f}", f"{r['peak_rss_gib']:.2f}"]
                             for r in train_rows]), ""]
    sample = rows[-1]
    per_call = spread(sample["seconds"])[0] / sample["steps"]
    lines += [f"sampling (bf16, batch {sample['batch']}, {sample['steps']} DDPM steps timed): "
              f"{per_call:.2f} s per network call of the batch, {per_call / sample['batch']:.3f} s per image per "
              f"step, DDPM-50 {50 * per_call / sample['batch']:.1f} s/image, peak RSS {sample['peak_rss_gib']:.2f} GiB",
              "", "GPU estimate (largest training batch; not measured on a GPU):", "",
              markdown_table(["configuration", "GiB per image", "fixed GiB", *(f"{g} GB" for g in GPU_GIB)],
                             gpu_estimates(train_rows, params))]
    print("\n".join(lines))
    (args.work_dir / "results.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
