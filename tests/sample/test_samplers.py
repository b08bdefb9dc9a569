"""The pure parts of sampling: per-image noise, schedulers, the denoising loop, work
splitting, PNG provenance and grids. Tiny tensors, no subprocesses."""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from PIL import Image

import ddpm_lesion
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.figures import encode_png
from ddpm_lesion.core.grids import make_grid
from ddpm_lesion.sample.provenance import (
    MANIFEST_FIELDS,
    image_settings,
    is_synthetic,
    manifest_row,
    png_text,
    read_manifest,
    read_png_text,
    write_manifest,
)
from ddpm_lesion.sample.samplers import (
    SchedulerName,
    denoise,
    image_generators,
    image_seed,
    initial_noise,
    make_scheduler,
    to_uint8,
)
from ddpm_lesion.sample.sharding import WHOLE, Shard, block_indices, num_blocks, parse_shard, shard_blocks

SHAPE = (3, 4, 4)


class ElementwiseNet(torch.nn.Module):
    """A stand-in for the UNet whose output for a row depends on that row alone, in exact
    float arithmetic, so any batch dependence a test sees comes from the sampler."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=0.3 * sample + 1e-3 * timestep.float())


def test_image_seeds_are_stable_and_do_not_collide_across_nearby_seeds():
    assert image_seed(0, 1) != image_seed(1, 0)
    assert image_seed(0, 1) == image_seed(0, 1)
    assert 0 <= image_seed(123, 456) < 2**63


def test_noise_of_an_image_is_independent_of_its_batch():
    together = initial_noise(image_generators(7, range(5)), SHAPE)
    for i in range(5):
        alone = initial_noise(image_generators(7, [i]), SHAPE)
        assert torch.equal(together[i], alone[0])


def test_seeding_has_not_drifted():
    """A change to how (seed, index) maps to noise would silently change every image ever
    made with that seed; this pins it (values recorded with torch 2.13's CPU generator)."""
    assert image_seed(0, 0) == 0x647756FA265D087F
    noise = initial_noise(image_generators(0, [0]), (1, 1, 4)).flatten()
    expected = torch.tensor([-0.8833347, -1.5852517, 0.0369462, 0.2651299])
    torch.testing.assert_close(noise, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,cls", [
    ("ddpm", DDPMScheduler), ("ddim", DDIMScheduler), ("dpmsolver++", DPMSolverMultistepScheduler),
    ("sde-dpmsolver++", DPMSolverMultistepScheduler),
    ("unipc", UniPCMultistepScheduler),
])
def test_schedulers_keep_the_models_noise_schedule(name, cls):
    base = DDPMScheduler(num_train_timesteps=500, beta_schedule="squaredcos_cap_v2").config
    scheduler = make_scheduler(name, base)
    assert type(scheduler) is cls
    assert scheduler.config.num_train_timesteps == 500
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
    assert {s.value for s in SchedulerName} == {"ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++", "unipc",
                                                "ddim-trailing", "dpmsolver++-trailing", "sde-dpmsolver++-trailing",
                                                "unipc-trailing", "dpmsolver++-linspace", "unipc-linspace",
                                                "ddim-eta0.5", "ddim-eta0.7", "ddim-eta1"}


@pytest.mark.parametrize("name,first", [("dpmsolver++", 940), ("dpmsolver++-trailing", 999),
                                        ("unipc-linspace", 999), ("ddim-trailing", 999), ("ddim", 950)])
def test_timestep_spacing_variants_start_from_pure_noise(name, first):
    """A model saved with "leading" spacing (the bundled ones, google/ddpm-*) starts 20 steps
    at t = 940-950; the trailing and linspace variants at t = 999."""
    scheduler = make_scheduler(name, DDPMScheduler(num_train_timesteps=1000, timestep_spacing="leading").config)
    scheduler.set_timesteps(20)
    assert int(scheduler.timesteps[0]) == first and len(scheduler.timesteps) == 20


def test_ddim_eta_variants_renoise_from_the_images_generators():
    """η = 0 is deterministic given the initial noise; η > 0 draws fresh noise at every step,
    from each image's own generator (so the same seed gives the same image)."""
    base = DDPMScheduler().config
    net = ElementwiseNet()
    noise = initial_noise(image_generators(5, range(2)), SHAPE)

    def run(name: str, seed: int = 5) -> torch.Tensor:
        return denoise(net, make_scheduler(name, base), noise, image_generators(seed, range(2)), 10)

    plain = run("ddim")
    for name in ("ddim-eta0.5", "ddim-eta0.7", "ddim-eta1"):
        once, again, other = run(name), run(name), run(name, seed=6)
        assert torch.equal(once, again) and not torch.equal(once, plain) and not torch.equal(once, other)


def test_dpmsolver_is_the_plus_plus_variant():
    assert make_scheduler("dpmsolver++", DDPMScheduler().config).config.algorithm_type == "dpmsolver++"
    assert make_scheduler("sde-dpmsolver++", DDPMScheduler().config).config.algorithm_type == "sde-dpmsolver++"


@pytest.mark.parametrize("name", [s.value for s in SchedulerName])
def test_denoise_is_batch_invariant_when_the_network_is(name):
    """DDPM draws fresh noise at every step: it must come from each image's own generator."""
    scheduler = make_scheduler(name, DDPMScheduler().config)
    net = ElementwiseNet()

    def run(indices):
        generators = image_generators(3, indices)
        return denoise(net, scheduler, initial_noise(generators, SHAPE), generators, 5)

    together = run(range(4))
    assert together.shape == (4, 4, 4, 3) and together.dtype == torch.uint8
    for i in range(4):
        assert torch.equal(together[i], run([i])[0])


class ExactGaussianDenoiser(torch.nn.Module):
    """The exact noise prediction for data ~ N(mu, cov): E[eps | x_t] in closed form, the
    network a perfect training run would converge to. With it, a correct sampler must
    draw from N(mu, cov), so this checks the samplers with no model error in the way."""

    def __init__(self, mu: torch.Tensor, cov: torch.Tensor, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.mu, self.alphas_cumprod = mu, alphas_cumprod.double()
        self.eigenvalues, self.eigenvectors = torch.linalg.eigh(cov)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> SimpleNamespace:
        a = self.alphas_cumprod[timestep.long()]
        x = sample.reshape(len(sample), -1).double()
        # E[x0 | x_t] = mu + cov sqrt(a) (a cov + (1 - a) I)^-1 (x_t - sqrt(a) mu), in cov's eigenbasis
        shrink = a.sqrt() * self.eigenvalues / (a * self.eigenvalues + 1 - a)
        x0 = self.mu + ((x - a.sqrt() * self.mu) @ self.eigenvectors * shrink) @ self.eigenvectors.T
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return SimpleNamespace(sample=eps.float().reshape(sample.shape))


@pytest.mark.parametrize("name,steps,low,high", [
    ("ddpm", 1000, 0.9, 1.1), ("ddim", 1000, 0.9, 1.1), ("dpmsolver++", 20, 0.9, 1.1),
    ("sde-dpmsolver++", 20, 0.9, 1.1), ("unipc", 20, 0.9, 1.1),
    ("dpmsolver++-trailing", 20, 0.9, 1.1), ("unipc-linspace", 20, 0.9, 1.1), ("ddim-eta1", 1000, 0.9, 1.1),
    ("ddpm", 50, 0.75, 0.92),  # ancestral steps this long lose variance even with the exact x0 estimate
])
def test_samplers_draw_from_the_data_distribution_given_the_exact_denoiser(name, steps, low, high):
    """2000 images of a 48-dimensional Gaussian whose variance sits in 4 directions
    (std 0.12-0.4) above an isotropic floor (std 0.05). The mean and the variance along
    the 4 main directions must come out right (sampling error of a variance: ~3%).

    Detail below the noise level of the last step is not recovered by any sampler (the
    floor's variance comes out at 10-90% of its true value, less with fewer steps): the
    exact x0 estimate there shrinks it, as a trained network's would. DDPM with 50 steps
    keeps only 80-90% of the main variances even with the exact denoiser (its fixed
    per-step variance ignores the uncertainty of x0 over long steps), DPM-Solver++ with 20
    steps 93-104%: why the fast solvers can win once the network is accurate (BENCHMARKS.md)."""
    torch.manual_seed(0)
    dims = 3 * 4 * 4
    mu = torch.rand(dims, dtype=torch.float64) * 0.6 - 0.3
    spread = torch.randn(dims, 4, dtype=torch.float64) * 0.12
    cov = spread @ spread.T + 0.05**2 * torch.eye(dims, dtype=torch.float64)
    base = DDPMScheduler(num_train_timesteps=1000).config
    net = ExactGaussianDenoiser(mu, cov, DDPMScheduler.from_config(base).alphas_cumprod)
    generators = image_generators(0, range(2000))
    images = denoise(net, make_scheduler(name, base), initial_noise(generators, SHAPE), generators, steps)
    x = (images.permute(0, 3, 1, 2).double() / 127.5 - 1).reshape(len(images), -1)
    assert (x.mean(0) - mu).abs().max() < 0.03
    main_variance = ((x - mu) @ net.eigenvectors[:, -4:]).var(0) / net.eigenvalues[-4:]
    assert ((main_variance > low) & (main_variance < high)).all(), main_variance


def test_denoise_leaves_the_template_scheduler_untouched():
    scheduler = make_scheduler("dpmsolver++", DDPMScheduler().config)
    generators = image_generators(0, [0])
    denoise(ElementwiseNet(), scheduler, initial_noise(generators, SHAPE), generators, 3)
    assert scheduler.num_inference_steps is None and scheduler.step_index is None


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_network_sees_channels_last_inputs_under_the_requested_autocast(dtype):
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> SimpleNamespace:
            seen.append((sample.is_contiguous(memory_format=torch.channels_last), torch.is_autocast_enabled("cpu"),
                         torch.get_autocast_dtype("cpu"), timestep.device.type))
            return SimpleNamespace(sample=0.3 * sample)

    generators = image_generators(0, range(2))
    scheduler = make_scheduler("dpmsolver++", DDPMScheduler().config)
    out = denoise(Probe(), scheduler, initial_noise(generators, SHAPE), generators, 3, dtype)
    assert out.dtype == torch.uint8 and len(seen) == 3
    for channels_last, autocast, autocast_dtype, timestep_device in seen:
        assert channels_last and autocast == (dtype is not None) and timestep_device == "cpu"
        assert dtype is None or autocast_dtype is dtype


def test_to_uint8_inverts_the_training_normalisation():
    pixels = torch.arange(256, dtype=torch.float32)
    as_model_sees_them = (pixels / 127.5 - 1).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(as_model_sees_them).flatten(), pixels.to(torch.uint8))
    extremes = torch.tensor([-3.0, -1.0, 1.0, 3.0]).reshape(1, 1, 2, 2)
    assert to_uint8(extremes).flatten().tolist() == [0, 0, 255, 255]


def test_parse_shard():
    assert parse_shard(None) == WHOLE
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("4/4", "-1/4", "1", "a/b", "1/0"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad)


def test_shards_cover_every_block_once():
    total = num_blocks(num_images=23, block_size=4)
    assert total == 6 and block_indices(5, 4) == range(20, 24)
    dealt = [b for k in range(4) for b in shard_blocks(total, Shard(k, 4))]
    assert sorted(dealt) == list(range(total))
    assert list(shard_blocks(total, WHOLE)) == list(range(total))


def settings(**overrides):
    values = dict(model_sha256="ab" * 32, seed=1, scheduler="ddim", steps=5, batch_size=4, mixed_precision="no",
                  native_size=(16, 16), size=(32, 32))
    return image_settings(**{**values, **overrides})


def test_png_provenance_round_trip(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(Image.new("RGB", (4, 4)), png_text(settings(), index=12)))
    text = read_png_text(path)
    assert text["synthetic"] == "true" and text["index"] == "12" and text["seed"] == "1"
    assert text["generator"] == f"ddpm-lesion {ddpm_lesion.__version__}"
    assert text["model_sha256"] == "ab" * 32 and text["resolution"] == "32x32" and "Research use only" in text["Description"]
    assert is_synthetic(path) and ddpm_lesion.is_synthetic(str(path))


def test_is_synthetic_is_false_for_other_files(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "real.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "real.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    assert not any(is_synthetic(tmp_path / name) for name in ("real.png", "real.jpg", "notes.txt"))
    with pytest.raises(FileNotFoundError):
        is_synthetic(tmp_path / "missing.png")


# sha256 of png_chunks() of the image and text below, computed once and pinned
PINNED_PNG_CHUNKS = "056f36a8046106f7f8a5a9021f54346b3b4fb4bbc3163260045142ae3127eac1"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG file, IDAT payloads decompressed (so the
    result does not depend on the zlib build that compressed them)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos, idat = [], 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        payload = data[pos + 8:pos + 8 + length]
        if kind == b"IDAT":
            idat += payload
        else:
            chunks.append((kind, payload))
        pos += 12 + length
    chunks.insert(-1, (b"IDAT", zlib.decompress(idat)))
    return chunks


def test_png_bytes_are_reproducible():
    """No timestamp or other varying chunk: the chunks of an encoded image are pinned (a tIME
    chunk, or a date in a text chunk, would change the hash), and two encodes a second apart
    give the same bytes."""
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    text = {"synthetic": "true", "index": "3", "seed": "1"}
    first = encode_png(image, text)
    chunks = png_chunks(first)
    assert [kind for kind, _ in chunks] == [b"IHDR", b"tEXt", b"tEXt", b"tEXt", b"IDAT", b"IEND"]
    assert hashlib.sha256(repr(chunks).encode()).hexdigest() == PINNED_PNG_CHUNKS
    time.sleep(1.1)
    assert encode_png(image.copy(), text) == first


def test_manifest_round_trip(tmp_path):
    image = tmp_path / "individual" / "s_000003.png"
    image.parent.mkdir()
    image.write_bytes(encode_png(Image.new("RGB", (4, 4)), png_text(settings(), 3)))
    write_manifest(tmp_path / "manifest.csv", [manifest_row(image, tmp_path, read_png_text(image))])
    [row] = read_manifest(tmp_path / "manifest.csv")
    assert list(row) == list(MANIFEST_FIELDS)
    assert row["file"] == "individual/s_000003.png" and row["index"] == "3" and row["scheduler"] == "ddim"
    assert row["created"].endswith("+00:00")


def test_make_grid_places_tiles_row_by_row():
    tiles = [np.full((8, 8, 3), k, dtype=np.uint8) for k in range(5)]
    grid = np.asarray(make_grid(tiles, ncols=2, padding=2))
    assert grid.shape == (3 * 10 + 2, 2 * 10 + 2, 3)
    assert grid[2, 2, 0] == 0 and grid[2, 12, 0] == 1 and grid[12, 2, 0] == 2 and grid[22, 2, 0] == 4
    assert grid[22, 12, 0] == 0  # short last row stays blank
    assert make_grid([Image.new("L", (3, 3))], ncols=4, padding=0).size == (3, 3)


def test_make_grid_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="one size"):
        make_grid([Image.new("RGB", (4, 4)), Image.new("RGB", (5, 4))], ncols=2)
    with pytest.raises(ValueError):
        make_grid([], ncols=2)


def test_is_synthetic_does_not_make_the_package_import_heavy(tmp_path):
    import subprocess
    import sys

    code = "import sys, ddpm_lesion; print(any(m in sys.modules for m in ('torch', 'PIL', 'diffusers')))"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_background_writer_surfaces_the_first_failed_write():
    from ddpm_lesion.sample.generation import _BackgroundWriter

    def fail(k: int) -> None:
        if k == 3:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with _BackgroundWriter(workers=2, max_pending=2) as writer:
            for k in range(8):
                writer.submit(fail, k)
