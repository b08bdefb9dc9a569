"""Training checkpoints: written atomically, rotated, resumed exactly, never unpickled.

A `RUN/checkpoint-STEP/` folder holds
- the Accelerate state (`accelerator.save_state`): model weights as safetensors, optimizer,
  LR scheduler and grad scaler states — all read back with `torch.load(weights_only=True)`,
  which refuses anything that would run code;
- `pipeline/`: a `DDPMPipeline` of the EMA weights (or the live weights without EMA) in
  safetensors, loadable by plain diffusers and by `sample_ddpm.py --checkpoint STEP`;
- `trainer_state.json`: step and counters, plus the EMA's scalar state. The EMA shadow
  weights are the pipeline's weights, so they are stored once.

Every process writes into a temporary folder, and the main process renames it to
`checkpoint-STEP` only when everything is on disk: a kill or a full disk mid-save leaves
the previous checkpoint as the latest complete one.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from ddpm_lesion.core import run_files
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import replace_dir, write_text_atomic
from ddpm_lesion.model.conditioning import load_class_names, save_class_names
from ddpm_lesion.model.pretrained import list_checkpoints, read_best

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


@dataclass
class TrainerState:
    """Everything about progress that is not a tensor. RNG state is not needed: every
    random draw is a function of (seed, step) — see `ddpm_lesion.train.batching`."""

    global_step: int = 0
    skipped_steps: int = 0
    consecutive_bad_steps: int = 0
    ema: dict | None = None


def export_unet(unet: UNet2DModel, ema: EMAModel | None) -> UNet2DModel:
    """A plain-layout copy of the weights to publish and to sample from: the EMA weights when
    EMA is on, in eval mode (the training copy's dropout would make every sample noisier)."""
    exported = copy.deepcopy(unet).to("cpu", memory_format=torch.contiguous_format)
    if ema is not None:
        ema.copy_to(exported.parameters())
    return exported.float().eval()


def save_pipeline(unet: UNet2DModel, scheduler: DDPMScheduler, folder: Path, class_names: list[str] | None = None) -> None:
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    if class_names is not None:
        save_class_names(folder, class_names)


def publish_pipeline(source: Path, dest: Path) -> None:
    """Copy the pipeline folder `source` into `dest` (which may hold other files: a run's
    checkpoints and logs), each part replaced whole and `model_index.json` written last,
    so its presence means the pipeline there is complete."""
    for sub in ("unet", "scheduler"):
        tmp = dest / f".{sub}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source / sub, tmp)
        replace_dir(tmp, dest / sub)
    class_names = load_class_names(source)
    if class_names is not None:
        save_class_names(dest, class_names)
    write_text_atomic(dest / "model_index.json", (source / "model_index.json").read_text(encoding="utf-8"))


def check_finite(unet: UNet2DModel) -> None:
    bad = [name for name, p in unet.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(
            f"refusing to save a checkpoint: {len(bad)} weight tensors hold NaN/Inf (first: {bad[0]}). "
            "The previous checkpoint is kept. Lower --learning_rate, use bf16 instead of fp16, "
            "or check the data report for broken images."
        )


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainerState, unet: UNet2DModel,
                    ema: EMAModel | None, scheduler: DDPMScheduler, total_limit: int | None,
                    class_names: list[str] | None = None) -> Path:
    """Write `checkpoint-STEP` atomically on every process; returns its path."""
    final = run_dir / f"{run_files.CHECKPOINT_PREFIX}{state.global_step}"
    tmp = run_dir / f".{final.name}.tmp"
    exported = export_unet(unet, ema)
    ok = torch.tensor([1.0], device=accelerator.device)
    error = ""
    try:
        check_finite(exported)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            save_pipeline(exported, scheduler, tmp / run_files.CHECKPOINT_PIPELINE, class_names)
            state.ema = _ema_scalars(ema)
            write_text_atomic(tmp / run_files.CHECKPOINT_STATE, json.dumps(asdict(state), indent=2))
    except (OSError, UserError) as err:
        ok.zero_()
        error = str(err)
    # All ranks learn whether any rank failed, so none waits forever at a barrier.
    if accelerator.gather(ok).min().item() < 1:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = list_checkpoints(run_dir)
        kept = f"{previous[-1][1].name} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"could not write {final}: {error or 'a write failed on another process'}. "
                        f"{kept}; free disk space (or fix the folder's permissions) and rerun the same "
                        "command with --resume_from_checkpoint latest.")
    if accelerator.is_main_process:
        replace_dir(tmp, final)
        rotate_checkpoints(run_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def _ema_scalars(ema: EMAModel | None) -> dict | None:
    if ema is None:
        return None
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


def rotate_checkpoints(run_dir: Path, total_limit: int | None) -> None:
    """Keep the newest `total_limit` checkpoints (diffusers' `--checkpoints_total_limit`),
    and always the best-scoring one."""
    if total_limit is None:
        return
    best = read_best(run_dir)
    for step, path in list_checkpoints(run_dir)[:-total_limit]:
        if best is None or step != best["step"]:
            shutil.rmtree(path)


def find_checkpoint(run_dir: Path, spec: str) -> Path | None:
    """`latest` (None when there is none yet, so a first run starts fresh, as in
    diffusers), `checkpoint-STEP`, a step number, or a path."""
    if spec == "latest":
        found = list_checkpoints(run_dir)
        return found[-1][1] if found else None
    candidates = [Path(spec), run_dir / spec, run_dir / f"{run_files.CHECKPOINT_PREFIX}{spec}"]
    for path in candidates:
        if (path / run_files.CHECKPOINT_STATE).is_file():
            return path
    raise UserError(f"--resume_from_checkpoint {spec}: no complete checkpoint there "
                    f"(looked in {', '.join(str(c) for c in candidates)}). Use 'latest' or one of: "
                    f"{', '.join(p.name for _, p in list_checkpoints(run_dir)) or 'none yet'}.")


def load_checkpoint(accelerator: Accelerator, path: Path, unet: UNet2DModel, ema: EMAModel | None) -> TrainerState:
    """Restore model, optimizer, LR scheduler, scaler and EMA from `path`."""
    try:
        accelerator.load_state(str(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise UserError(
            f"refusing to load {path}: a state file there is not a plain tensor file "
            f"(loading it could run code, or it is truncated). Delete that checkpoint folder to resume from "
            f"an earlier one. Details: {type(err).__name__}: {str(err).splitlines()[0]}"
        ) from None
    state = TrainerState(**json.loads((path / run_files.CHECKPOINT_STATE).read_text(encoding="utf-8")))
    if ema is not None:
        weights = load_file(path / run_files.CHECKPOINT_PIPELINE / "unet" / WEIGHTS_FILE)
        shadow = copy.deepcopy(accelerator.unwrap_model(unet)).float()
        shadow.load_state_dict(weights)
        ema.load_state_dict({**(state.ema or {}), "shadow_params": [p.detach().to(accelerator.device)
                                                                     for p in shadow.parameters()]})
    return state
