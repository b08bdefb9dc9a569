"""The `auto` settings of `sample_ddpm.py` for the machine at hand: the precision it
computes fastest, and the largest batch that fits.

Both are part of an image's identity (float rounding depends on them), so `generation`
resolves them once per output folder, records the result in `sample_config.yaml` and in
every PNG like a value typed on the command line, and a resumed folder reuses the recorded
values instead of asking the machine again.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel

# On a CPU the batch only has to keep the vector units busy; larger batches spill the
# caches and run slower per image (bench CPU, bf16: the 1 M UNet is fastest at 32, the
# 101 M one at 8; 16 is within 8% of the best for both, BENCHMARKS.md).
CPU_BATCH_SIZE = 16
# Share of the free GPU memory the automatic batch may plan to use: the allocator's
# fragmentation and cuDNN/cuBLAS workspaces need the rest.
MEMORY_HEADROOM = 0.8
# Batch sizes of the two probe passes that measure memory per image.
_PROBE_BATCHES = (1, 4)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 runs natively here: CUDA GPUs with bf16 tensor cores (Ampere and
    newer), CPUs with AVX512-BF16 or AMX instructions. Elsewhere bf16 is emulated, slower
    than float32 (oneDNN on plain AVX-512; CUDA before Ampere). On the bench CPU (Zen 5,
    AVX512-BF16, idle) bf16 made the 1 M demo UNet 1.4x (2 threads) to 1.6x (1 thread)
    faster and the 101 M UNet about 2x (BENCHMARKS.md). With more torch threads than idle
    cores every precision slows down many-fold; that is a thread-count problem, not a
    precision one."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def fit_batch_size(free_bytes: int, fixed_bytes: int, per_image_bytes: int, ceiling: int) -> int:
    """The largest power of two, at most `ceiling`, whose batch needs no more than
    `MEMORY_HEADROOM` of `free_bytes` (`fixed_bytes` + batch x `per_image_bytes`); 1 if
    even that does not fit. Powers of two: GPU kernels are tiled in them, and a batch that
    is not one wastes part of the last tile."""
    budget = MEMORY_HEADROOM * free_bytes - fixed_bytes
    batch = 1
    while batch * 2 <= ceiling and batch * 2 * per_image_bytes <= budget:
        batch *= 2
    return batch


def auto_batch_size(unet: UNet2DModel, shape: tuple[int, int, int], device: torch.device,
                    autocast_dtype: torch.dtype | None, rows_per_image: int, ceiling: int) -> int:
    """Images per network call for `unet` on `device`, at most `ceiling`.

    On a GPU, from the free memory and the memory one more image costs, measured with two
    probe passes (`measure_memory`); on a CPU, `CPU_BATCH_SIZE`. `rows_per_image` is 2 under
    classifier-free guidance, which runs the conditional and unconditional rows together.
    """
    if device.type != "cuda":
        return min(ceiling, CPU_BATCH_SIZE)
    fixed, per_row = measure_memory(unet, shape, device, autocast_dtype)
    free, _ = torch.cuda.mem_get_info(device)
    return fit_batch_size(free, fixed, per_row * rows_per_image, ceiling)


def measure_memory(unet: UNet2DModel, shape: tuple[int, int, int], device: torch.device,
                   autocast_dtype: torch.dtype | None) -> tuple[int, int]:
    """(fixed bytes, bytes per batch row) of one forward pass on a CUDA device, from the
    allocator's peak at two batch sizes: the slope is the per-row cost, the intercept what
    any batch needs (autocast's weight copies, workspaces)."""
    peaks = []
    for batch in _PROBE_BATCHES:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        sample = torch.zeros((batch, *shape), device=device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                    enabled=autocast_dtype is not None):
            unet(sample, torch.zeros((), dtype=torch.long, device=device))
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
        del sample
    torch.cuda.empty_cache()
    return fixed_and_per_row(_PROBE_BATCHES, peaks)


def fixed_and_per_row(batches: tuple[int, int], peaks: list[int]) -> tuple[int, int]:
    """Intercept and slope of the line through (batch, peak bytes) at two batch sizes; the
    slope is at least 1 byte so a caller can divide by it."""
    (b1, b2), (p1, p2) = batches, peaks
    per_row = max(1, -(-(p2 - p1) // (b2 - b1)))
    return max(0, p1 - per_row * b1), per_row
