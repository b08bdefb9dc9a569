"""Loading pretrained UNets, noise schedules and pipelines — with no silent fallback.

The origin script fell back to random weights when the download failed, so a user could
train for days from scratch without knowing. Here every load either succeeds from a folder
or the HF cache/hub (honouring `HF_HUB_OFFLINE`), or stops with a message that names the
model and the fix. Where the files are, in which of the two pipeline layouts, and whether a
legacy pickled `.bin` is safe to read is `ddpm_lesion.model.source`'s job.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.models.resnet import ResnetBlock2D

from ddpm_lesion.core import run_files
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.model.source import ModelSource, offline, resolve


def _load_error(name: str, err: Exception, what: str, consequence: str = "") -> UserError:
    where = (f"'{name}' is a folder, but it holds no {what}" if Path(name).is_dir()
             else f"'{name}' is neither a local folder nor a model in the Hugging Face cache"
             + (" (HF_HUB_OFFLINE is set, so the hub was not asked)" if offline() else ""))
    return UserError(
        f"could not load the {what} from {where}. Pass a folder written by `save_pretrained` "
        f"(it has model_index.json or config.json) or a hub id that is already in the cache "
        f"(`hf download {name}` on a machine with internet; `huggingface-cli download` before huggingface_hub "
        f"0.34), e.g. google/ddpm-ema-church-256 (128 px) or google/ddpm-cifar10-32 (32-64 px), see the README's "
        f"'Pretrained starting points'; or train from "
        f"scratch with --model_config. {consequence}Details: {type(err).__name__}: {err}"
    )


def resolve_model(name_or_path: str, revision: str | None = None, what: str = "UNet2DModel",
                  consequence: str = "") -> ModelSource:
    """`model_source.resolve` with this module's error message."""
    try:
        return resolve(name_or_path, revision)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err, what, consequence) from None


def load_unet(name_or_path: str, revision: str | None = None) -> UNet2DModel:
    """The UNet of a DDPM pipeline (its `unet/` sub-folder, or the top of a flat hub
    checkpoint) or of a bare UNet folder."""
    consequence = "Nothing was trained from random weights. "
    source = resolve_model(name_or_path, revision, consequence=consequence)
    try:
        return UNet2DModel.from_pretrained(source.folder, subfolder=source.unet_subfolder)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err, "UNet2DModel", consequence) from None


def load_noise_scheduler(name_or_path: str, revision: str | None = None) -> DDPMScheduler:
    """The noise schedule the model was pretrained with.

    Fine-tuning must use the same betas as pretraining, so the pipeline's own
    `scheduler_config.json` is used; a bare UNet folder gets diffusers' default (linear
    betas, 1000 steps), which is what `train_unconditional.py` assumes.
    """
    source = resolve_model(name_or_path, revision, "noise scheduler config")
    if source.scheduler_config is None:
        return DDPMScheduler(num_train_timesteps=1000)
    try:
        return DDPMScheduler.from_pretrained(source.scheduler_config.parent)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, err, "noise scheduler config") from None


def downsample_factor(unet: UNet2DModel) -> int:
    """Each down block but the last halves the resolution."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


def check_resolution(unet: UNet2DModel, resolution: int) -> None:
    factor = downsample_factor(unet)
    if resolution <= 0 or resolution % factor:
        lower = max(factor, resolution // factor * factor)
        raise UserError(
            f"--resolution {resolution} does not fit this UNet: its {len(unet.config.block_out_channels)} "
            f"resolution levels need a multiple of {factor}. Use --resolution {lower} or {lower + factor}."
        )


def set_dropout(unet: UNet2DModel, probability: float) -> None:
    """Dropout in every residual block, as `UNet2DModel(dropout=...)` builds it; set on a loaded
    model because the pretrained checkpoints were saved without it (Ho et al. trained CIFAR-10
    with 0.1: a few hundred images are memorised sooner than 50,000). Recorded in the config, so
    the published model says how it was trained; `eval()` turns it off for sampling."""
    for module in unet.modules():
        if isinstance(module, ResnetBlock2D):
            module.dropout.p = probability
    unet.register_to_config(dropout=probability)


def read_best(run_dir: Path) -> dict | None:
    """The checkpoint with the lowest validation KID so far (`ddpm_lesion.train.checkpoint_kid`)."""
    path = Path(run_dir) / run_files.BEST_CHECKPOINT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete `checkpoint-STEP` folders of a run, oldest first. Half-written ones live
    under a temporary name and are never listed."""
    found = []
    for path in run_dir.glob(f"{run_files.CHECKPOINT_PREFIX}*"):
        step = path.name[len(run_files.CHECKPOINT_PREFIX):]
        if path.is_dir() and step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def resolve_pipeline_dir(model_dir: str, checkpoint: str | None = None) -> str:
    """Where the pipeline to sample from lives.

    `model_dir` may be a training run folder (its final EMA pipeline sits at the top, as
    diffusers' examples do; `checkpoint` = `latest` or a step picks an intermediate one),
    any `DDPMPipeline` folder, or a hub id. `best` is the checkpoint with the lowest
    validation KID (see `ddpm_lesion.train.checkpoint_kid`).
    """
    path = Path(model_dir)
    if checkpoint is None:
        if path.is_dir() and not (path / "model_index.json").is_file():
            hint = " It holds checkpoints: add --checkpoint latest." if list_checkpoints(path) else ""
            raise UserError(f"{model_dir} is not a DDPMPipeline folder (no model_index.json).{hint}")
        return model_dir
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise UserError(f"--checkpoint {checkpoint}: {model_dir} holds no checkpoint-STEP folders.")
    if checkpoint == "latest":
        return str(checkpoints[-1][1] / run_files.CHECKPOINT_PIPELINE)
    if checkpoint == "best":
        best = read_best(path)
        if best is None:
            raise UserError(f"--checkpoint best: {model_dir} has no {run_files.BEST_CHECKPOINT}; train with --validation_data_dir "
                            "to score checkpoints, or use --checkpoint latest.")
        checkpoint = str(best["step"])
    by_step = dict(checkpoints)
    if not checkpoint.isdigit() or int(checkpoint) not in by_step:
        raise UserError(f"--checkpoint {checkpoint}: not found in {model_dir}; "
                        f"available: latest, best, {', '.join(str(s) for s in by_step)}.")
    return str(by_step[int(checkpoint)] / run_files.CHECKPOINT_PIPELINE)


def load_pipeline(model_dir: str, checkpoint: str | None = None) -> tuple[DDPMPipeline, str]:
    """Load a `DDPMPipeline` for sampling; returns it and the folder/id it came from."""
    source = resolve_pipeline_dir(model_dir, checkpoint)
    folder = resolve_model(source, what="DDPMPipeline").folder
    try:
        return DDPMPipeline.from_pretrained(folder), source
    except (OSError, ValueError) as err:
        raise _load_error(source, err, "DDPMPipeline") from None


def model_sha256(unet: UNet2DModel) -> str:
    """A fingerprint of the weights and architecture, independent of file layout, so a
    synthetic image names exactly the model that made it."""
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}  # drop load-path bookkeeping
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
