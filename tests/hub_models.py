"""Stand-ins for the real pretrained DDPMs on the Hugging Face Hub, written into a temporary
Hugging Face cache exactly as `hf download` leaves them, so tests exercise the
loading path a user hits (`--pretrained_model_name_or_path google/ddpm-cifar10-32` with
`HF_HUB_OFFLINE=1`) without a network or 600 MB of downloads.

The configs are those of the Hub repositories (their `config.json` and
`scheduler_config.json`, checked on huggingface.co): both repositories are in the flat
layout of 2022 (the UNet's config and weights and the scheduler config side by side, no
`unet/` folder), and their pickled weights use the attention key names diffusers converts
on load (`query`, `key`, `value`, `proj_attn`). Only the weights are random.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

# google/ddpm-cifar10-32, config.json (35,746,307 parameters; attention at 16x16)
CIFAR10_32 = "google/ddpm-cifar10-32"
CIFAR10_32_UNET = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_32_SCHEDULER = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.0", "beta_end": 0.02, "beta_schedule": "linear",
    "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
    "variance_type": "fixed_large",
}
# google/ddpm-ema-church-256, config.json (113,673,219 parameters; attention at 16x16 of 256 px)
CHURCH_256 = "google/ddpm-ema-church-256"
CHURCH_256_UNET = {
    "_class_name": "UNet2DModel", "_diffusers_version": "0.0.4", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}
CHURCH_256_SCHEDULER = {
    "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02, "beta_schedule": "linear",
    "beta_start": 0.0001, "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None,
    "variance_type": "fixed_small",
}
MODEL_INDEX = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.1.1",
               "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
_LEGACY_ATTENTION = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def commit_hash(repo_id: str) -> str:
    """A fixed 40-hex "commit" per repository, as the cache names its snapshots."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def snapshot_dir(cache: Path, repo_id: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit_hash(repo_id)


def write_hub_snapshot(cache: Path, repo_id: str, unet_config: dict, scheduler_config: dict,
                       weights: str = "safetensors", seed: int = 0) -> Path:
    """Random weights for `unet_config` under `repo_id` in the cache at `cache`
    (`HF_HUB_CACHE`), flat layout, `refs/main` pointing at the snapshot. `weights` is
    "safetensors" or "bin" (a pickled state dict with the legacy attention names, in torch's
    pre-zip format as the 2022 uploads are)."""
    from diffusers import UNet2DModel

    snapshot = snapshot_dir(cache, repo_id)
    snapshot.mkdir(parents=True)
    torch.manual_seed(seed)
    unet = UNet2DModel.from_config(unet_config)
    state = unet.state_dict()
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "diffusion_pytorch_model.safetensors")
    else:
        legacy = {}
        for key, value in state.items():
            if ".attentions." in key:
                for new, old in _LEGACY_ATTENTION.items():
                    key = key.replace(new, old)
            legacy[key] = value
        torch.save(legacy, snapshot / "diffusion_pytorch_model.bin", _use_new_zipfile_serialization=False)
    write_configs(snapshot, unet_config, scheduler_config)
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text(commit_hash(repo_id))
    return snapshot


def write_configs(snapshot: Path, unet_config: dict, scheduler_config: dict) -> None:
    (snapshot / "config.json").write_text(json.dumps(unet_config, indent=2))
    (snapshot / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2))
    (snapshot / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
