"""The real pretrained DDPMs the README recommends, as a user meets them: by hub id, from an
offline Hugging Face cache, in the Hub's own flat layout, one as safetensors and one as a
pickled `.bin` only; fine-tuned at a size other than their native one, resumed, sampled at
the new size. And what must never load: a planted pickle under a hub id.

The architectures are exact (tests/hub_models.py), so these are the real parameter counts
and memory; only the weights are random. The 114 M church-256 UNet runs at batch 1, one
step (plus one resumed), 128 px, on one thread.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.helpers import write_images
from tests.hub_models import (
    CHURCH_256,
    CHURCH_256_SCHEDULER,
    CHURCH_256_UNET,
    CIFAR10_32,
    CIFAR10_32_SCHEDULER,
    CIFAR10_32_UNET,
    commit_hash,
    snapshot_dir,
    write_configs,
    write_hub_snapshot,
)
from tests.launch_utils import run_script

pytestmark = pytest.mark.slow


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def hf_env(tmp_path: Path) -> dict[str, str]:
    return {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}


def finetune_resume_sample(tmp_path: Path, repo_id: str, resolution: int) -> tuple[Path, Path, str]:
    """train_ddpm.py one step at `resolution`, then resumed for a second; sample_ddpm.py one
    image. Returns the run folder, the sample folder and the resumed run's log."""
    write_images(tmp_path / "images", 3, size=resolution + 8)
    run = tmp_path / "run"
    args = ["--train_data_dir", str(tmp_path / "images"), "--pretrained_model_name_or_path", repo_id,
            "--resolution", str(resolution), "--output_dir", str(run), "--train_batch_size", "1",
            "--checkpointing_steps", "1", "--save_images_steps", "1000", "--num_sample_images", "1",
            "--sample_inference_steps", "2", "--lr_warmup_steps", "0", "--cache_dir", str(tmp_path / "cache"),
            "--resume_from_checkpoint", "latest", "--checkpoints_total_limit", "1"]
    env = hf_env(tmp_path)
    ok(run_script("train_ddpm.py", [*args, "--max_train_steps", "1"], env=env, timeout=600))
    resumed = ok(run_script("train_ddpm.py", [*args, "--max_train_steps", "2"], env=env, timeout=600))
    out = tmp_path / "out"
    ok(run_script("sample_ddpm.py", ["--model_dir", str(run), "--num_images", "1", "--num_inference_steps", "2",
                                     "--batch_size", "1", "--output_dir", str(out), "--seed", "0"],
                  env=env, timeout=600))
    return run, out, resumed.stdout + resumed.stderr


def check_run(run: Path, out: Path, log: str, repo_id: str, resolution: int, native: int, variance: str,
              weights_file: Path) -> None:
    assert "resumed from" in log and "at step 1" in log
    steps = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == ["1", "2"]
    unet_config = json.loads((run / "unet/config.json").read_text())
    assert unet_config["sample_size"] == resolution
    assert unet_config["block_out_channels"] == (CHURCH_256_UNET if repo_id == CHURCH_256
                                                 else CIFAR10_32_UNET)["block_out_channels"]
    # the noise schedule is the pretrained model's own, not diffusers' default
    assert json.loads((run / "scheduler/scheduler_config.json").read_text())["variance_type"] == variance
    images = sorted((out / "individual").glob("*.png"))
    assert len(images) == 1 and Image.open(images[0]).size == (resolution, resolution)

    base = json.loads((run / "base_model.json").read_text())
    assert base["base_model"] == repo_id and base["revision"] == commit_hash(repo_id)
    assert base["native_resolution"] == native and base["from_scratch"] is False
    assert base["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    card = (run / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == repo_id and front["license"] == "apache-2.0"
    assert commit_hash(repo_id) in card and base["weights_sha256"] in card
    assert f"native resolution | {native} px; fine-tuned at {resolution} px" in card
    assert "Research use only" in card and "3 images used" in card and "2 optimizer steps" in card


def test_cifar10_32_safetensors_by_hub_id_finetunes_at_64_px_resumes_and_samples(tmp_path):
    snapshot = write_hub_snapshot(tmp_path / "hub", CIFAR10_32, CIFAR10_32_UNET, CIFAR10_32_SCHEDULER, "safetensors")
    run, out, log = finetune_resume_sample(tmp_path, CIFAR10_32, 64)
    check_run(run, out, log, CIFAR10_32, 64, 32, "fixed_large", snapshot / "diffusion_pytorch_model.safetensors")


def test_church_256_bin_only_by_hub_id_finetunes_at_128_px_resumes_and_samples(tmp_path):
    snapshot = write_hub_snapshot(tmp_path / "hub", CHURCH_256, CHURCH_256_UNET, CHURCH_256_SCHEDULER, "bin")
    assert not list(snapshot.glob("*.safetensors"))
    run, out, log = finetune_resume_sample(tmp_path, CHURCH_256, 128)
    check_run(run, out, log, CHURCH_256, 128, 256, "fixed_small", snapshot / "diffusion_pytorch_model.bin")
    # what the run publishes is safetensors, whatever it started from
    assert not list(run.rglob("*.bin")) or all("checkpoint-" in str(p) for p in run.rglob("*.bin"))
    assert (run / "unet/diffusion_pytorch_model.safetensors").is_file()


class Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_under_a_hub_id_is_refused_without_running(tmp_path):
    """Both entry points, training and sampling, from the offline cache; the marker file the
    pickle would create never appears."""
    import torch

    snapshot = snapshot_dir(tmp_path / "hub", CIFAR10_32)
    snapshot.mkdir(parents=True)
    write_configs(snapshot, CIFAR10_32_UNET, CIFAR10_32_SCHEDULER)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit_hash(CIFAR10_32))
    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": Planted(marker)}, snapshot / "diffusion_pytorch_model.bin")
    write_images(tmp_path / "images", 2, size=40)
    env = hf_env(tmp_path)

    train = run_script("train_ddpm.py", ["--train_data_dir", str(tmp_path / "images"), "--pretrained_model_name_or_path",
                                         CIFAR10_32, "--resolution", "32", "--output_dir", str(tmp_path / "run"),
                                         "--max_train_steps", "1", "--cache_dir", str(tmp_path / "cache")], env=env)
    sample = run_script("sample_ddpm.py", ["--model_dir", CIFAR10_32, "--num_images", "1",
                                           "--output_dir", str(tmp_path / "out")], env=env)
    for result in (train, sample):
        assert result.returncode != 0
        message = result.stdout + result.stderr
        assert "refusing to load" in message and "diffusion_pytorch_model.bin" in message
        assert "could run code" in message and "GLOBAL posix.system" in message
        assert "Traceback" not in message
    assert not marker.exists()
    assert not (tmp_path / "run" / "unet").exists()
