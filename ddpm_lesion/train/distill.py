"""`ddpm-lesion distill`: a few-step sampler by progressive distillation.

Salimans & Ho 2022 ("Progressive Distillation for Fast Sampling of Diffusion Models"):
a student, initialised as a copy of its teacher, learns to go in ONE deterministic DDIM
step where the teacher goes in TWO; the student then becomes the teacher of the next
round, so each round halves the steps (here 16 -> 8 -> 4 by default). Each round is plain
supervised regression on the teacher's own trajectories, starting from the training
images noised to a grid timestep, so it needs neither a discriminator nor many images.

Kept from the teacher: the epsilon parametrisation, the noise schedule and x0 clipping,
so the result is an ordinary `DDPMPipeline` folder whose scheduler is a `DDIMScheduler`
with "trailing" timesteps (the grid below, starting at the last training timestep), and
`distilled.json` says which sampler and step count it was made for; `sample_ddpm.py`
picks them up by itself.

Experimental, because the price is quality: a student can at best match its teacher, the
DDIM sampler at `--teacher_steps`, and DDIM is itself far worse than ancestral DDPM on small
or briefly trained models. On the fine-tuned demo model the 4-step student had 1.6x the KID
of DDIM-20 and 10x that of DDPM-50 (BENCHMARKS.md). Measure it with `bench/samplers.py`
before relying on it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel
from tqdm.auto import tqdm

from ddpm_lesion.core import run_files
from ddpm_lesion.core.config import (
    load_yaml,
    option,
    save_config,
    to_plain_dict,
)
from ddpm_lesion.core.devices import pick_device
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.figures import encode_png, figure_png, pyplot
from ddpm_lesion.core.fileio import remove_stale_temps, replace_dir, write_bytes_atomic, write_text_atomic
from ddpm_lesion.core.resume_guard import resume_differences
from ddpm_lesion.data.labels import parse_filter
from ddpm_lesion.data.training_images import load_training_images
from ddpm_lesion.model.pretrained import load_pipeline, model_sha256
from ddpm_lesion.sample.autotune import bf16_is_fast
from ddpm_lesion.sample.samplers import SchedulerName
from ddpm_lesion.train import batching, checkpoints
from ddpm_lesion.train.loop import sample_grid
from ddpm_lesion.train.losses import Augmentation, augment


@dataclasses.dataclass
class DistillConfig:
    """Options of `ddpm-lesion distill`."""

    model_dir: str | None = option(None, "The teacher: a training run folder, any DDPMPipeline folder, or a hub id "
                                         "already in the HF cache.")
    checkpoint: str | None = option(None, "Distil a run's checkpoint instead of its final pipeline: 'latest', "
                                          "'best' or a step number.", metavar="latest|best|STEP")
    train_data_dir: Path | None = option(None, "Images whose noised versions start the teacher's trajectories: the "
                                               "teacher's own training images.")
    labels_csv: Path | None = option(None, "Labels CSV of --train_data_dir (as for train_ddpm.py).")
    label_filter: list[str] = option([], "Keep rows where COLUMN=VALUE (repeatable), as for train_ddpm.py.",
                                     metavar="COLUMN=VALUE")
    id_column: str | None = option(None, "CSV column holding image ids (default: detected from the format).")
    cache_dir: Path | None = option(None, "Where decoded, resized images are cached.")
    output_dir: Path | None = option(None, "Where the distilled pipeline, distilled.json, the rounds and the loss "
                                           "curve go. Rerunning the same command resumes after the last finished "
                                           "round.")
    teacher_steps: int = option(16, "DDIM steps of the original model, the first teacher.")
    num_inference_steps: int = option(4, "Steps of the final student; --teacher_steps divided by a power of two "
                                         "(each round halves).")
    iterations_per_round: int = option(3000, "Optimizer steps per round (~8 min per round for the 1 M demo UNet "
                                             "on 2 CPU cores).")
    train_batch_size: int = option(16, "Images per optimizer step.")
    learning_rate: float = option(1e-4, "AdamW learning rate (constant; the student starts from the teacher's "
                                        "weights).")
    augmentation: Augmentation = option(Augmentation.HFLIP, "Orientations shown of each training image: dihedral "
                                                            "(all 8), hflip or none.")
    mixed_precision: str = option("no", "Run the networks under bf16 autocast: no, bf16, or auto (where the device "
                                        "runs it natively). Off by default: the targets differ from the student's "
                                        "output by ~1% of epsilon, and bf16 rounds to ~0.4%.",
                                  choices=["no", "bf16", "auto"])
    num_sample_images: int = option(16, "Images in the grid saved after each round.")
    seed: int = option(0, "Seed of the data order, noise and timesteps: same seed, same student.")


# What a resumed distillation may change (`ddpm_lesion.core.resume_guard`); all else must match.
MAY_CHANGE_ON_RESUME = {"output_dir", "cache_dir", "num_sample_images"}


def step_grid(steps: int, num_train_timesteps: int) -> list[int]:
    """The timesteps of a `steps`-step sampler, from the last training timestep down:
    `DDIMScheduler(timestep_spacing="trailing")`'s grid, so the distilled model samples
    with a stock scheduler. The grid of 2N steps holds the grid of N at its even
    positions (exactly, for N dividing the number of training timesteps by a power of
    two), which is what lets a 2N-step teacher supervise an N-step student."""
    return (np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1).tolist()


def round_schedule(teacher_steps: int, student_steps: int) -> list[int]:
    """Student step counts of the rounds, e.g. (16, 4) -> [8, 4]."""
    rounds = int(round(math.log2(teacher_steps / student_steps))) if student_steps > 0 else 0
    if student_steps < 1 or rounds < 1 or student_steps * 2**rounds != teacher_steps:
        raise UserError(f"--teacher_steps {teacher_steps} must be --num_inference_steps {student_steps} times a power "
                        f"of two (each round halves the steps), e.g. --teacher_steps {max(2, student_steps) * 4}.")
    return [teacher_steps // 2**r for r in range(1, rounds + 1)]


def ddim_step(sample: torch.Tensor, epsilon: torch.Tensor, alpha_t: torch.Tensor, alpha_next: torch.Tensor,
              clip_range: float | None) -> torch.Tensor:
    """One deterministic DDIM step (Song et al. 2021, eq. 12, eta = 0) from cumulative alpha
    `alpha_t` to `alpha_next` (per row, broadcastable), clipping the predicted x0 like
    diffusers' `DDIMScheduler.step` does when the model's config says clip_sample."""
    x0 = (sample - (1 - alpha_t).sqrt() * epsilon) / alpha_t.sqrt()
    if clip_range is not None:
        x0 = x0.clamp(-clip_range, clip_range)
    return alpha_next.sqrt() * x0 + (1 - alpha_next).sqrt() * epsilon


def distillation_loss(student: UNet2DModel, teacher: UNet2DModel, clean: torch.Tensor, alphas: torch.Tensor,
                      teacher_grid: list[int], generator: torch.Generator, clip_range: float | None,
                      autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """Mean squared error, in epsilon units, between one student DDIM step and two teacher steps.

    For each image: a student step i of the N-step grid (the teacher's even positions),
    x_t = sqrt(a_t) x + sqrt(1 - a_t) eps at its timestep t, the teacher's two DDIM steps
    t -> t' -> t'' (its grid's next two points; after the last one, alpha = 1: the clean
    image) and the student's one step t -> t'', both with the model's x0 clipping, as the
    sampler will run them. Their difference is divided by d(step)/d(epsilon) =
    sqrt(1 - a'') - sqrt(a'') sqrt(1 - a_t) / sqrt(a_t), so where no clipping applies the
    loss is the student's error against the epsilon that would land exactly on the
    teacher's point, on the scale of ordinary training at every t.

    Salimans & Ho instead weight the x0 error by max(SNR, 1), which asks an epsilon model
    for ~150x finer epsilon at the first step; with an unclipped epsilon student that was
    measured much worse on the demo model (KID 614 vs 394 x 1e-3 for 4 steps, BENCHMARKS.md):
    they recommend an x0 or v parametrisation for it, which a fine-tuned epsilon model
    would have to be retrained into.
    """
    device = clean.device
    grid = torch.tensor([*teacher_grid, -1])
    student_steps = len(teacher_grid) // 2
    index = torch.randint(0, student_steps, (clean.shape[0],), generator=generator)
    t, t_mid, t_next = grid[2 * index], grid[2 * index + 1], grid[2 * index + 2]

    def alpha(timesteps: torch.Tensor) -> torch.Tensor:
        value = torch.where(timesteps >= 0, alphas[timesteps.clamp(min=0)], torch.ones(()))
        return value.view(-1, 1, 1, 1).to(device)

    a_t, a_mid, a_next = alpha(t), alpha(t_mid), alpha(t_next)
    noise = torch.randn(clean.shape, generator=generator).to(device)
    noisy = a_t.sqrt() * clean + (1 - a_t).sqrt() * noise
    t, t_mid = t.to(device), t_mid.to(device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        with torch.no_grad():
            mid = ddim_step(noisy, teacher(noisy, t).sample.float(), a_t, a_mid, clip_range)
            target = ddim_step(mid, teacher(mid, t_mid).sample.float(), a_mid, a_next, clip_range)
        landed = ddim_step(noisy, student(noisy, t).sample.float(), a_t, a_next, clip_range)
    scale = (1 - a_next).sqrt() - a_next.sqrt() * (1 - a_t).sqrt() / a_t.sqrt()
    return (((landed - target) / scale) ** 2).mean()


def distill(cfg: DistillConfig) -> Path:
    """Run (or resume) every round; returns the folder of the distilled pipeline."""
    student_rounds = validate(cfg)
    device = pick_device()
    autocast = torch.bfloat16 if cfg.mixed_precision == "bf16" or (
        cfg.mixed_precision == "auto" and bf16_is_fast(device)) else None
    pipeline, source = load_pipeline(cfg.model_dir, cfg.checkpoint)
    unet = pipeline.unet
    if unet.config.get("num_class_embeds"):
        raise UserError(f"{source} is a class-conditional model; distill supports unconditional models only. "
                        "Distil one model per class, or sample the conditional model with sample_ddpm.py.")
    base = pipeline.scheduler.config
    if base.get("prediction_type", "epsilon") != "epsilon":
        raise UserError(f"{source} predicts {base['prediction_type']!r}; distill supports epsilon models only.")
    clip_range = base.get("clip_sample_range", 1.0) if base.get("clip_sample") else None
    num_train = base["num_train_timesteps"]
    if num_train % cfg.num_inference_steps:
        raise UserError(f"--num_inference_steps {cfg.num_inference_steps} must divide the model's {num_train} training "
                        "timesteps: DDIMScheduler steps back by their quotient, so any other count would sample on "
                        "another grid than the student learned (e.g. 4, 5, 8 or 10 for 1000).")
    alphas = torch.as_tensor(pipeline.scheduler.alphas_cumprod, dtype=torch.float32)
    images = load_training_images(cfg.train_data_dir, cfg.labels_csv, [parse_filter(f) for f in cfg.label_filter],
                                  cfg.id_column, unet.config.sample_size, cache_dir=cfg.cache_dir).pixels.to(device)
    out = prepare_output(cfg)  # only once the teacher and the data are known to load
    print(f"ddpm-lesion distill: teacher {source} (DDIM, {cfg.teacher_steps} steps), {len(images)} images, rounds to "
          f"{', '.join(map(str, student_rounds))} steps, {cfg.iterations_per_round} iterations each, device "
          f"{device.type}, mixed precision {'bf16' if autocast else 'no'}", flush=True)
    teacher_steps = cfg.teacher_steps
    teacher = unet.to(device, memory_format=torch.channels_last)
    for steps in student_rounds:
        folder = out / run_files.DISTILL_ROUNDS_DIR / f"steps-{steps}"
        if (folder / "model_index.json").is_file():
            print(f"round {teacher_steps} -> {steps} steps: done earlier ({folder})", flush=True)
        else:
            student, losses = train_round(cfg, teacher, images, alphas, step_grid(teacher_steps, num_train),
                                          clip_range, autocast, steps)
            save_round(student, base, steps, cfg, out, losses)
        teacher = UNet2DModel.from_pretrained(folder / "unet").to(device, memory_format=torch.channels_last).eval()
        teacher_steps = steps
    checkpoints.publish_pipeline(out / run_files.DISTILL_ROUNDS_DIR / f"steps-{cfg.num_inference_steps}", out)
    record = {"scheduler": SchedulerName.DDIM.value, "num_inference_steps": cfg.num_inference_steps,
              "teacher": source, "teacher_sha256": model_sha256(unet), "teacher_steps": cfg.teacher_steps,
              "method": "progressive distillation (Salimans & Ho 2022)"}
    write_text_atomic(out / run_files.DISTILLED, json.dumps(record, indent=2) + "\n")
    print(f"done: {out} samples with DDIM in {cfg.num_inference_steps} steps "
          f"(sample_ddpm.py --model_dir {out} picks them); grids in {out / 'samples'}, loss curve {out / 'loss.png'}. "
          "Check its KID against the teacher's with bench/samplers.py before relying on it.", flush=True)
    return out


def validate(cfg: DistillConfig) -> list[int]:
    if not cfg.model_dir:
        raise UserError("--model_dir is required: the fine-tuned model to distil.")
    if cfg.output_dir is None:
        raise UserError("--output_dir is required.")
    if cfg.train_data_dir is None:
        raise UserError("--train_data_dir is required: the images the teacher was trained on.")
    for name in ("iterations_per_round", "train_batch_size", "num_sample_images"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(cfg, name)}.")
    for expr in cfg.label_filter:
        parse_filter(expr)
    return round_schedule(cfg.teacher_steps, cfg.num_inference_steps)


def prepare_output(cfg: DistillConfig) -> Path:
    """Create the output folder, or check that the one there was made with the same settings."""
    out = cfg.output_dir
    saved = out / run_files.DISTILL_CONFIG
    if saved.is_file():
        differences = resume_differences(load_yaml(saved), to_plain_dict(cfg), MAY_CHANGE_ON_RESUME)
        if differences:
            raise UserError(f"{out} holds a distillation with other settings ({'; '.join(differences)}). Use the "
                            "same settings to resume it, or choose another --output_dir.")
    elif out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} is not empty and holds no {run_files.DISTILL_CONFIG}: choose a new or empty --output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out / run_files.DISTILL_ROUNDS_DIR)
    save_config(cfg, saved)
    return out


def train_round(cfg: DistillConfig, teacher: UNet2DModel, images: torch.Tensor, alphas: torch.Tensor,
                teacher_grid: list[int], clip_range: float | None, autocast: torch.dtype | None,
                steps: int) -> tuple[UNet2DModel, list[float]]:
    """One round: a copy of `teacher` trained to halve its steps, and its losses (an
    interrupted round restarts from its beginning; finished rounds are kept)."""
    teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    device = images.device
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.learning_rate, weight_decay=0.0,
                                  fused=device.type in ("cuda", "cpu"))
    losses = []
    progress = tqdm(range(cfg.iterations_per_round), desc=f"round {len(teacher_grid)} -> {steps} steps", unit="it",
                    dynamic_ncols=True)
    for iteration in progress:
        generator = batching.micro_batch_generator(cfg.seed, iteration, steps)
        index = torch.randint(0, len(images), (cfg.train_batch_size,), generator=generator)
        clean = augment(images[index.to(device)], generator, cfg.augmentation)
        loss = distillation_loss(student, teacher, clean.contiguous(memory_format=torch.channels_last), alphas,
                                 teacher_grid, generator, clip_range, autocast)
        if not torch.isfinite(loss):
            raise UserError(f"the distillation loss became {loss.item()} in the round to {steps} steps at iteration "
                            f"{iteration}: lower --learning_rate (e.g. 1e-5) or pass --mixed_precision no.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.4g}")
    return student.eval(), losses


def save_round(student: UNet2DModel, base_config: dict, steps: int, cfg: DistillConfig, out: Path,
               losses: list[float]) -> Path:
    """The round's student as a DDIM pipeline (written aside, then moved into place), its
    sample grid and its losses."""
    folder = out / run_files.DISTILL_ROUNDS_DIR / f"steps-{steps}"
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    exported = copy.deepcopy(student).to("cpu", memory_format=torch.contiguous_format).float()
    scheduler = DDIMScheduler.from_config(base_config, timestep_spacing="trailing", set_alpha_to_one=True)
    checkpoints.save_pipeline(exported, scheduler, tmp)
    replace_dir(tmp, folder)
    grid = sample_grid(exported, dict(scheduler.config), SchedulerName.DDIM, cfg.num_sample_images, steps, cfg.seed,
                       None)
    write_bytes_atomic(out / run_files.SAMPLES_DIR / f"steps-{steps}.png", encode_png(grid))
    record_losses(out, steps, losses)
    return folder


def record_losses(out: Path, steps: int, losses: list[float]) -> None:
    """`losses.csv` (one row per iteration of every finished round) and `loss.png`, one curve a round."""
    path = out / run_files.DISTILL_LOSSES
    rows = [r for r in path.read_text(encoding="utf-8").splitlines()[1:] if not r.startswith(f"{steps},")] \
        if path.is_file() else []
    rows += [f"{steps},{i + 1},{loss:.6g}" for i, loss in enumerate(losses)]
    write_text_atomic(path, "round_steps,iteration,loss\n" + "\n".join(rows) + "\n")
    curves: dict[int, list[float]] = {}
    for row in rows:
        round_steps, _, loss = row.split(",")
        curves.setdefault(int(round_steps), []).append(float(loss))
    fig, ax = pyplot().subplots(figsize=(6, 3.5), dpi=100)
    for round_steps, values in sorted(curves.items(), reverse=True):
        ax.plot(range(1, len(values) + 1), values, alpha=0.7, label=f"to {round_steps} steps")
    ax.set_xlabel("iteration")
    ax.set_ylabel("epsilon-space MSE to the teacher")
    ax.set_yscale("log")
    ax.legend()
    write_bytes_atomic(out / run_files.LOSS_PLOT, figure_png(fig))
