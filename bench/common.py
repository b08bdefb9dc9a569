"""What the bench scripts share: the machine record, interleaved timing, peak throughput and
peak memory, the origin's UNet, and held-out "real" sets for KID.

Timings on a shared machine drift with the neighbours' load, so every script alternates
its variants in one process (A B A B ...) and reports the median of the repeats with their
min and max; the ratio is taken between medians of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.utils import logging as diffusers_logging

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the bench scripts run from a checkout, installed or not (import `common` first)

from ddpm_lesion.data.demo_lesions import draw_lesion  # noqa: E402
from ddpm_lesion.model.unet_presets import PRESETS  # noqa: E402

diffusers_logging.disable_progress_bar()  # the scripts print their own tables

DEMO_MODEL = REPO / "demo" / "pretrained" / "ddpm-lesion-tiny-32"
# Seed stream of the held-out real sets: the demo images use stream 0, the demo model's
# pretraining set stream 1 and its training noise stream 2 (scripts/make_demo_assets.py).
HELD_OUT_STREAM = 9


def origin_unet(sample_size: int = 64) -> UNet2DModel:
    """A UNet2DModel of the origin's size, random weights: 101.1 M parameters and 69.8 GFLOP
    per 64 px forward (torch's FlopCounterMode), as the issue measured for the origin's
    64 px model (the `ddpm-64` preset of `--model_config`). Channels (128, 256, 512, 512), two ResNet
    layers per level, self-attention at 16x16. Random weights time the same as trained
    ones, but their images are noise: no KID for this size."""
    torch.manual_seed(0)
    return UNet2DModel.from_config({**PRESETS["ddpm-64"], "sample_size": sample_size})


def forward_gflop(unet: UNet2DModel, batch: int = 1) -> float:
    """GFLOP of one forward pass per image (multiply-add = 2), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    size = unet.config.sample_size
    x = torch.zeros(batch, unet.config.in_channels, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, torch.tensor(500))
    return counter.get_total_flops() / batch / 1e9


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import accelerate
    import diffusers

    info = {"cpu": f"{model}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}",
            "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "accelerate": accelerate.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


class PeakKernels:
    """Compute-bound kernels whose GFLOP/s stand for the machine's peak in a precision: a
    square matmul (MKL or cuBLAS) and a 3x3 convolution (oneDNN or cuDNN, channels_last),
    in fp32 and bf16. Both, because on AMD CPUs MKL's fp32 GEMM runs an AVX2 path while
    oneDNN's convolution uses AVX-512, so the matmul alone understates what a UNet can
    reach. They run as `interleave` variants beside the code they are compared with, so
    peak and achieved throughput are measured under the same load."""

    CALLS = 5  # kernel launches per variant call

    def __init__(self, device: str) -> None:
        n = 2048 if device == "cpu" else 8192
        self.variants: dict[str, Callable[[], None]] = {}
        self.flops: dict[str, float] = {}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
            x = torch.randn(8, 256, 32, 32, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(256, 256, 3, 3, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
            self._add(f"peak {name} matmul", lambda a=a, b=b: a @ b, 2 * n**3)
            self._add(f"peak {name} conv", lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1),
                      2 * 8 * 256 * 256 * 9 * 32 * 32)

    def _add(self, name: str, kernel: Callable[[], torch.Tensor], flops: float) -> None:
        def run() -> None:
            with torch.inference_mode():
                for _ in range(self.CALLS):
                    kernel()

        self.variants[name] = run
        self.flops[name] = self.CALLS * flops

    def gflops(self, times: Mapping[str, list[float]]) -> dict[str, float]:
        """{'fp32': ..., 'bf16': ...}: the faster kernel's median GFLOP/s in each precision."""
        best: dict[str, float] = {}
        for name, flops in self.flops.items():
            precision = name.split()[1]
            best[precision] = max(best.get(precision, 0.0), flops / spread(times[name])[0] / 1e9)
        return best


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_memory(fn: Callable[[], object], device: str | torch.device) -> int:
    """Peak bytes of tensors `fn` had allocated at once, above what was allocated when it
    started. On a GPU CUDA's allocator statistics; on a CPU the same quantity rebuilt from
    the profiler's allocation records (each op's own allocations net of its frees, at its
    start, plus the frees outside ops), since the CPU allocator keeps no statistics and the
    process's RSS mostly measures what glibc keeps or returns. Run separately from the
    timed repeats: the profiler slows small ops down."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def interleave(variants: Mapping[str, Callable[[], float | None]], repeats: int, device: str = "cpu"
               ) -> dict[str, list[float]]:
    """Run every variant once untimed (warm-up), then `repeats` rounds of all of them in
    turn. Returns the seconds of each timed call, per variant: the call's wall time, or the
    seconds it returns itself (a variant that times only part of its work, e.g. not the
    model loading)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            reported = fn()
            sync(device)
            times[name].append(reported if reported is not None else time.perf_counter() - start)
    return times


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def write_real_set(folder: Path, n: int, size: int, *, malignant: bool | None, varied: bool, seed: int = 0) -> Path:
    """`n` procedural lesions from a seed stream no model here was trained on: the same
    distribution as the demo model's data, so KID measures the sampler, not a domain gap.
    `malignant=None` alternates the classes (as the demo model's pretraining set does)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"real_{i:05d}.png"
        if not path.exists():
            rng = np.random.default_rng([seed, HELD_OUT_STREAM, i])
            draw_lesion(rng, size, malignant=(i % 2 == 1) if malignant is None else malignant,
                        varied=varied).save(path)
    return folder


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def run_sizes(args: argparse.Namespace, bench_size: Callable[[str, argparse.Namespace, str], dict],
              report: Callable[[list[dict], dict[str, str]], str]) -> None:
    """A bench script's main: each requested size on the GPU if there is one, the table
    printed, and the machine record and raw results saved to `--work_dir`/results.json."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = machine()
    sizes = ["tiny", "origin64"] if args.size == "all" else [args.size]
    results = [bench_size(name, args, device) for name in sizes]
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report(results, info))
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=2,
                                                           default=float))
