"""Generation speed: the origin recipe against `sample_ddpm.py`'s defaults, same weights, same process.

The origin recipe is `DDPM_sampling.py` as its README describes it: DDPMScheduler, 50
steps, batch 4, float32, a Python loop with the network under `torch.no_grad`, each PNG
saved in the loop (here at the native resolution: the origin's 128 px bilinear upsampling
is left out of both). "Ours" is `generate()` with every option at its default. Variants
alternate (origin, ours, origin, ...); each reports seconds per image (median, min, max
over the repeats), GFLOP/s end to end and in the network alone (the UNet forward at the
variant's batch, precision and layout) as a fraction of the measured peak of its precision
(compute-bound matmul and convolution kernels, timed in the same rounds), peak memory, and
KID of both against the same held-out real set.

Sizes:
- `tiny`: the bundled demo model (1.1 M parameters, 32 px, trained weights), all steps, or
  `--tiny_model`: another model of the same pretraining distribution, e.g. one with a
  `sampler.json` from `ddpm-lesion pick-sampler`, which "ours" then uses like sample_ddpm.py.
- `origin64`: the origin's 101 M-parameter UNet at 64 px with random weights (they time like
  trained ones; their images are noise, so no KID and no sampler choice of their own:
  `--sampler` times ours with the setting picked for a trained model). On a CPU a full run
  takes minutes per image, so by default both recipes run a tenth of their steps (5 of 50)
  and the seconds per image are scaled to the full step count; `--full` runs every step.

    python bench/sample.py                      # both sizes, ~5 min on 2 CPU cores
    python bench/sample.py --tiny_model runs/tiny-long --size tiny   # its picked sampler against the origin
    python bench/sample.py --size origin64 --sampler dpmsolver++:15
    python bench/sample.py --size origin64 --full --num_images 5900 --origin_images 64 --repeats 1   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import tempfile
import time
from pathlib import Path

import torch
import yaml
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
    write_real_set,
)
from diffusers import DDPMPipeline, DDPMScheduler
from PIL import Image

from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.evaluate.audit import EvalConfig, evaluate_folders
from ddpm_lesion.evaluate.features import FeatureSpace
from ddpm_lesion.sample.generation import AUTOCAST_DTYPES, generate
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.sample.samplers import DEFAULT_STEPS, SchedulerName

ORIGIN_STEPS, ORIGIN_BATCH = 50, 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "origin64", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num_images", type=int, default=None,
                        help="images per timed run of ours (default: 32 tiny, 16 origin64)")
    parser.add_argument("--origin_images", type=int, default=None,
                        help="images per timed run of the origin recipe (default: 32 tiny, 8 origin64)")
    parser.add_argument("--full", action="store_true", help="origin64: run every step instead of a tenth")
    parser.add_argument("--tiny_model", type=Path, default=DEMO_MODEL,
                        help="the `tiny` size's model (32 px, the demo's pretraining distribution)")
    parser.add_argument("--sampler", default=None, metavar="SCHEDULER:STEPS",
                        help="ours with this sampler instead of the automatic one")
    parser.add_argument("--kid_images", type=int, default=200, help="tiny: images per recipe for KID (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--work_dir", type=Path, default=Path(tempfile.gettempdir()) / "ddpm-lesion-bench" / "sample")
    return parser.parse_args()


def origin_recipe(model_dir: Path, out: Path, num_images: int, steps: int, seed: int) -> float:
    """The origin's generation loop; returns the seconds of the loop (model loading excluded)."""
    pipe = DDPMPipeline.from_pretrained(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = pipe.unet.to(device).eval()
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for first in range(0, num_images, ORIGIN_BATCH):
        image = torch.randn(min(ORIGIN_BATCH, num_images - first), 3, size, size, generator=generator).to(device)
        for t in scheduler.timesteps:
            with torch.no_grad():
                noise_pred = unet(image, t).sample
            image = scheduler.step(noise_pred, t, image, generator=generator).prev_sample
        pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for k, array in enumerate(pixels):
            Image.fromarray(array).save(out / f"origin_{first + k:05d}.png")
    return time.perf_counter() - start


def ours(model_dir: Path, out: Path, num_images: int, sampler: tuple[str | None, int | None], seed: int,
         precision: str | None = None) -> tuple[float, dict]:
    """`generate()` with the defaults (the sampler overridden only by `--sampler` or for a
    shortened run, precision only for the comparison row); returns the seconds of sampling
    and writing, as `generate` reports them, and the resolved settings the folder recorded."""
    cfg = SampleConfig(model_dir=str(model_dir), output_dir=out, num_images=num_images, seed=seed, overwrite=True)
    scheduler, cfg.num_inference_steps = sampler
    cfg.scheduler = None if scheduler is None else SchedulerName(scheduler)
    if precision is not None:
        cfg.mixed_precision = MixedPrecision(precision)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = generate(cfg)
    return summary.seconds, yaml.safe_load((out / "sample_config.yaml").read_text())


class Forward:
    """One `interleave` variant: `calls` UNet forwards at one batch, precision and layout (the
    network alone, for its GFLOP/s)."""

    def __init__(self, unet: torch.nn.Module, batch: int, dtype: torch.dtype | None, channels_last: bool,
                 device: str, calls: int) -> None:
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.unet = copy.deepcopy(unet).to(device, memory_format=layout)
        size = unet.config.sample_size
        self.x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
        self.t = torch.tensor(500, device=device)
        self.dtype, self.device, self.calls = dtype, torch.device(device), calls
        self.images = batch * calls

    def __call__(self) -> None:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                                                    enabled=self.dtype is not None):
            for _ in range(self.calls):
                self.unet(self.x, self.t)


def bench_size(name: str, args: argparse.Namespace, device: str) -> dict:
    work = args.work_dir / name
    scheduler, _, steps = args.sampler.partition(":") if args.sampler else (None, None, None)
    our_sampler = (scheduler, int(steps) if steps else None)
    if name == "tiny":
        model_dir, unet = args.tiny_model, DDPMPipeline.from_pretrained(args.tiny_model).unet.eval()
        n_ours, n_origin = args.num_images or 32, args.origin_images or 32
        # the settings `auto` resolves to (a picked sampler included), all steps
        recorded = ours(model_dir, work / "ours", n_ours, our_sampler, seed=0)[1]
        full_steps = {"origin": ORIGIN_STEPS, "ours": recorded["num_inference_steps"]}
        ran_steps = dict(full_steps)
    else:
        unet = origin_unet().eval()
        model_dir = work / "model"
        if not (model_dir / "model_index.json").is_file():
            DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(model_dir)
        n_ours, n_origin = args.num_images or 16, args.origin_images or 8
        full_steps = {"origin": ORIGIN_STEPS, "ours": our_sampler[1] or DEFAULT_STEPS}
        ran_steps = {k: v if args.full else max(1, round(v / 10)) for k, v in full_steps.items()}
        our_sampler = (scheduler, ran_steps["ours"])
        recorded = ours(model_dir, work / "ours", n_ours, our_sampler, seed=0)[1]
    full_steps["ours, other precision"], ran_steps["ours, other precision"] = full_steps["ours"], ran_steps["ours"]
    # The same defaults in the other precision, to show what bf16 itself is worth here.
    other = "no" if recorded["mixed_precision"] == "bf16" else "bf16"
    precisions = {"origin": "no", "ours": recorded["mixed_precision"], "ours, other precision": other}
    calls = max(1, 64 // recorded["batch_size"]) if name == "tiny" else 1
    networks = {"origin": Forward(unet, ORIGIN_BATCH, None, False, device, calls * recorded["batch_size"] // 4)}
    networks |= {variant: Forward(unet, recorded["batch_size"], AUTOCAST_DTYPES[MixedPrecision(precision)], True,
                                  device, calls) for variant, precision in precisions.items() if variant != "origin"}
    peaks = PeakKernels(device)
    variants = {"origin": lambda: origin_recipe(model_dir, work / "origin", n_origin, ran_steps["origin"], seed=0),
                "ours": lambda: ours(model_dir, work / "ours", n_ours, our_sampler, seed=0)[0],
                "ours, other precision": lambda: ours(model_dir, work / "ours-other", n_ours, our_sampler, seed=0,
                                                      precision=other)[0],
                **{f"{variant} network": forward for variant, forward in networks.items()}, **peaks.variants}
    seconds = interleave(variants, args.repeats, device)
    peak = peaks.gflops(seconds)
    memory = {variant: peak_memory(variants[variant], device) for variant in precisions}
    gflop = forward_gflop(unet)
    result = {"size": name, "params_M": sum(p.numel() for p in unet.parameters()) / 1e6, "gflop_per_forward": gflop,
              "model": str(model_dir), "peak_gflops": peak,
              "ours_settings": {k: recorded[k] for k in ("scheduler", "num_inference_steps", "batch_size",
                                                         "mixed_precision")}}
    result["ours_settings"]["num_inference_steps"] = full_steps["ours"]
    for variant, precision in precisions.items():
        scale = full_steps[variant] / ran_steps[variant]
        per_image = [s * scale / (n_origin if variant == "origin" else n_ours) for s in seconds[variant]]
        median = spread(per_image)[0]
        network = gflop * networks[variant].images / spread(seconds[f"{variant} network"])[0]
        peak_of = "bf16" if precision == "bf16" else "fp32"
        result[variant] = {"seconds_per_image": spread(per_image), "steps": full_steps[variant],
                           "ran_steps": ran_steps[variant], "precision": precision,
                           "gflops_end_to_end": gflop * full_steps[variant] / median, "gflops_network": network,
                           "network_fraction_of_peak": network / peak[peak_of], "peak_of": peak_of,
                           "peak_memory_MB": memory[variant] / 2**20,
                           "images_per_run": n_origin if variant == "origin" else n_ours}
    for variant in precisions:
        result[variant]["speedup"] = result["origin"]["seconds_per_image"][0] / result[variant]["seconds_per_image"][0]
    if name == "tiny" and args.kid_images:
        result["kid"] = kid_of_both(model_dir, work, args.kid_images, our_sampler)
    return result


def kid_of_both(model_dir: Path, work: Path, n: int, our_sampler: tuple[str | None, int | None]) -> dict:
    """KID (EfficientNet-Lite0 and pixel features) of `n` images of each recipe against 1000
    held-out procedural images of the demo model's training distribution."""
    real = write_real_set(work.parent / "real-pretrain", 1000, 32, malignant=None, varied=True)
    origin_recipe(model_dir, work / "kid-origin", n, ORIGIN_STEPS, seed=1)
    ours(model_dir, work / "kid-ours", n, our_sampler, seed=1)
    config = EvalConfig(features=[FeatureSpace.EFFICIENTNET, FeatureSpace.PIXELS], resolution=32)
    out = {}
    for variant in ("origin", "ours"):
        folder = work / f"kid-{variant}"
        scores = evaluate_folders(real, folder if variant == "origin" else folder / "individual", config=config)
        out[variant] = {key: {k: space["metrics"]["kid"][k] for k in ("value", "ci_low", "ci_high")}
                        for key, space in scores["feature_spaces"].items()}
    return out


def report(results: list[dict], info: dict[str, str]) -> str:
    header = ["size", "recipe", "steps", "s/image median [min, max]", "ratio", "GFLOP/s end to end",
              "network GFLOP/s (% of peak)", "peak memory MB", "KID effnet ×1e3 [interval]", "KID pixels ×1e3"]
    rows = []
    for r in results:
        label = f"tiny: {Path(r['model']).name}" if r["size"] == "tiny" and r["model"] != str(DEMO_MODEL) else r["size"]
        for variant in ("origin", "ours", "ours, other precision"):
            v = r[variant]
            median, low, high = v["seconds_per_image"]
            kid = r.get("kid", {}).get(variant)
            settings = r["ours_settings"]
            recipe = ("origin: ddpm, batch 4, fp32" if variant == "origin" else
                      f"{'ours' if variant == 'ours' else 'ours, not default'}: {settings['scheduler']}, "
                      f"batch {settings['batch_size']}, {v['precision']}")
            rows.append([
                f"{label} ({r['params_M']:.1f} M, {r['gflop_per_forward']:.2f} GFLOP)", recipe,
                f"{v['steps']}" + (f" (ran {v['ran_steps']})" if v["ran_steps"] != v["steps"] else ""),
                f"{median:.3f} [{low:.3f}, {high:.3f}]", f"{v['speedup']:.2f}×",
                f"{v['gflops_end_to_end']:.0f}",
                (f"{v['gflops_network']:.0f} ({100 * v['network_fraction_of_peak']:.0f}% of "
                 f"{v['peak_of']} {r['peak_gflops'][v['peak_of']]:.0f})"),
                f"{v['peak_memory_MB']:.0f}",
                "—" if kid is None else "{:.2f} [{:.2f}, {:.2f}]".format(
                    *(1e3 * kid["efficientnet-lite0"][k] for k in ("value", "ci_low", "ci_high"))),
                "—" if kid is None else f"{1e3 * kid['pixels16']['value']:.2f}"])
    return "\n".join(f"{k}: {v}" for k, v in info.items()) + "\n\n" + markdown_table(header, rows)


def main() -> None:
    run_sizes(parse_args(), bench_size, report)


if __name__ == "__main__":
    main()
