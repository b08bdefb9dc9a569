"""The automatic settings of `sample_ddpm.py`: the arithmetic of the batch-size fit (the GPU
path, with the device's answers stubbed), the bf16 detection, and how `generation`
resolves `auto` once and reuses what a folder recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.sample import autotune
from ddpm_lesion.sample.autotune import CPU_BATCH_SIZE, auto_batch_size, bf16_is_fast, fit_batch_size, fixed_and_per_row
from ddpm_lesion.sample.generation import resolve_auto
from ddpm_lesion.sample.sample_config import SampleConfig
from tests.helpers import tiny_unet

GB = 10**9
SHAPE = (3, 16, 16)


def test_fit_batch_size_is_the_largest_power_of_two_in_the_budget():
    # budget = 0.8 * 10 GB - 1 GB = 7 GB -> 70 images of 100 MB -> 64
    assert fit_batch_size(10 * GB, 1 * GB, GB // 10, ceiling=256) == 64
    assert fit_batch_size(10 * GB, 1 * GB, GB // 10, ceiling=48) == 32
    assert fit_batch_size(10 * GB, 9 * GB, GB // 10, ceiling=256) == 1  # nothing fits: still try one


def test_fixed_and_per_row_from_two_probes():
    assert fixed_and_per_row((1, 4), [110, 140]) == (100, 10)
    assert fixed_and_per_row((1, 4), [100, 100]) == (99, 1)  # flat: never divide by zero


def test_cpu_batch_is_fixed_and_capped():
    unet = tiny_unet()
    assert auto_batch_size(unet, SHAPE, torch.device("cpu"), None, 1, ceiling=256) == CPU_BATCH_SIZE
    assert auto_batch_size(unet, SHAPE, torch.device("cpu"), None, 1, ceiling=4) == 4


def test_gpu_batch_comes_from_free_memory_and_guidance_doubles_the_rows(monkeypatch):
    monkeypatch.setattr(autotune, "measure_memory", lambda *a: (1 * GB, GB // 10))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * GB, 80 * GB))
    cuda = torch.device("cuda")
    assert auto_batch_size(None, SHAPE, cuda, torch.bfloat16, rows_per_image=1, ceiling=256) == 64
    assert auto_batch_size(None, SHAPE, cuda, torch.bfloat16, rows_per_image=2, ceiling=256) == 32


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_bf16_on_cpu_needs_native_instructions(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert bf16_is_fast(torch.device("cpu")) is expected


def test_bf16_on_cuda_excludes_emulation(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: calls.append(including_emulation) or False)
    assert bf16_is_fast(torch.device("cuda")) is False and calls == [False]


def config(**overrides) -> SampleConfig:
    return SampleConfig(model_dir="m", output_dir=Path("out"), **overrides)


def resolve(cfg: SampleConfig, recorded: dict | None = None, device: str = "cpu") -> SampleConfig:
    return resolve_auto(cfg, recorded, tiny_unet(), SHAPE, torch.device(device), guided=False)[0]


@pytest.mark.parametrize("native,expected", [(True, MixedPrecision.BF16), (False, MixedPrecision.NO)])
def test_auto_resolves_for_this_machine(monkeypatch, native, expected):
    monkeypatch.setattr("ddpm_lesion.sample.generation.bf16_is_fast", lambda device: native)
    resolved = resolve(config())
    assert resolved.mixed_precision is expected and resolved.batch_size == CPU_BATCH_SIZE


def test_a_folders_recorded_values_win_over_the_machine(monkeypatch):
    monkeypatch.setattr("ddpm_lesion.sample.generation.bf16_is_fast", lambda device: True)
    resolved = resolve(config(), recorded={"mixed_precision": "no", "batch_size": 48})
    assert (resolved.mixed_precision, resolved.batch_size) == (MixedPrecision.NO, 48)


def test_explicit_values_are_kept():
    resolved = resolve(config(batch_size=3, mixed_precision=MixedPrecision.FP16), recorded={"batch_size": 48})
    assert (resolved.mixed_precision, resolved.batch_size) == (MixedPrecision.FP16, 3)


def test_shards_must_agree_on_an_explicit_batch_size():
    with pytest.raises(UserError, match="--shard needs an explicit --batch_size"):
        resolve(config(shard="0/2"))
    assert resolve(config(shard="0/2"), recorded={"batch_size": 8}).batch_size == 8
