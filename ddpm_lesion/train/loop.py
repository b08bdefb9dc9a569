"""Fine-tuning a pretrained DDPM with Accelerate: the configuration and the loop.

The loop reads top to bottom: set up (run folder, data, model, optimizer, resume), then
for each optimizer step draw the micro-batches, check the loss is finite on every rank,
step, update the EMA, log, and checkpoint. Data selection, loss, checkpoint format and
logging live in their own modules.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from ddpm_lesion.core import run_files, wandb_review
from ddpm_lesion.core.config import load_yaml, option, save_config, to_plain_dict
from ddpm_lesion.core.distributed import (
    check_process_count,
    main_process_first,
    run_on_main_process,
    same_on_every_process,
    use_cpu,
)
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.figures import encode_png
from ddpm_lesion.core.fileio import remove_stale_temps, write_bytes_atomic, write_text_atomic
from ddpm_lesion.core.grids import make_grid
from ddpm_lesion.core.options import MixedPrecision, ReportTo, values
from ddpm_lesion.core.resume_guard import resume_differences
from ddpm_lesion.data.labels import parse_filter
from ddpm_lesion.data.training_images import load_training_images
from ddpm_lesion.evaluate import review_tables
from ddpm_lesion.evaluate.features import FeatureSpace
from ddpm_lesion.model.conditioning import add_class_embedding, drop_labels
from ddpm_lesion.model.pretrained import check_resolution, load_noise_scheduler, load_unet, read_best, set_dropout
from ddpm_lesion.model.unet_presets import FROM_SCRATCH_WARNING, PRESETS, unet_from_config
from ddpm_lesion.sample.pick_sampler import PickSamplerConfig, pick_sampler
from ddpm_lesion.sample.samplers import (
    DEFAULT_SCHEDULER,
    DEFAULT_STEPS,
    SchedulerName,
    denoise,
    image_generators,
    initial_noise,
    make_scheduler,
)
from ddpm_lesion.train import batching, checkpoints, model_card, tracking
from ddpm_lesion.train.checkpoint_kid import CheckpointValidator
from ddpm_lesion.train.checkpoint_kid import record as record_validation
from ddpm_lesion.train.losses import Augmentation, augment, diffusion_loss


@dataclass
class TrainConfig:
    """Options of `train_ddpm.py` (flag names follow diffusers' `train_unconditional.py`)."""

    # Data
    train_data_dir: Path | None = option(None, "Folder of training images (searched recursively; .jpg/.jpeg/.png/.bmp/.tif).")
    labels_csv: Path | None = option(None, "Labels CSV (ISIC 2016-2020, HAM10000 or a one-column image_name list; format auto-detected).")
    label_filter: list[str] = option([], "Keep rows where COLUMN=VALUE, e.g. target=1 or dx=mel (repeatable; all must match).", metavar="COLUMN=VALUE")
    id_column: str | None = option(None, "CSV column holding image ids (default: detected from the format).")
    dataset_name: str | None = option(None, "A Hugging Face `datasets` dataset (hub id or local folder) instead of --train_data_dir.")
    dataset_config_name: str | None = option(None, "Config name of --dataset_name.")
    image_column: str = option("image", "Image column of --dataset_name.")
    cache_dir: Path | None = option(None, "Where decoded, resized images and downloads are cached.")
    resolution: int = option(64, "Training resolution in pixels: images are resized (shorter side) and centre-cropped to it.")
    augmentation: Augmentation = option(Augmentation.HFLIP, "Orientations shown of each training image: dihedral = "
                                                            "all 8 flips and quarter turns (dermoscopy has no up or "
                                                            "left), hflip = horizontal flips, none.")
    class_column: str | None = option(None, "Train ONE class-conditional model: the CSV column holding each image's class (e.g. dx), or comma-separated one-hot columns (e.g. MEL,NV,BCC).")
    class_embedding_lr: float = option(1e-3, "With --class_column: learning rate of the new class embedding, which starts at zero and learns from scratch while the pretrained weights only fine-tune.")
    label_dropout: float = option(0.1, "With --class_column: probability of training a step unconditionally (needed for --guidance_scale).")
    # Model
    pretrained_model_name_or_path: str | None = option(None, "Pretrained DDPMPipeline or UNet2DModel: a hub id (e.g. google/ddpm-ema-church-256 for 128 px, google/ddpm-cifar10-32 for 32-64 px) or a local folder.")
    revision: str | None = option(None, "Hub revision of the pretrained model.")
    model_config: str | None = option(None, "Train FROM SCRATCH instead of fine-tuning (a few hundred images will be "
                                            "memorised): a preset (" + ", ".join(PRESETS) + ") or a UNet2DModel "
                                            "config.json. Excludes --pretrained_model_name_or_path.",
                                      metavar="PRESET|config.json")
    # Optimisation
    output_dir: Path | None = option(None, "Run folder: checkpoints, samples, logs, the final EMA pipeline.")
    seed: int = option(0, "Seed for data order, noise, timesteps and augmentation: same seed, same run.")
    train_batch_size: int = option(16, "Images per device per micro-batch.")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.")
    num_epochs: int = option(100, "Passes over the data (ignored when --max_train_steps is set).")
    max_train_steps: int | None = option(None, "Total optimizer steps (overrides --num_epochs).")
    learning_rate: float = option(1e-5, "Peak learning rate; low because this fine-tunes a pretrained model.")
    lr_scheduler: str = option("cosine", "LR schedule.", choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"])
    lr_warmup_steps: int = option(100, "Linear warm-up steps.")
    adam_beta1: float = option(0.95, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_weight_decay: float = option(1e-6, "AdamW weight decay.")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.")
    max_grad_norm: float = option(1.0, "Gradient clipping norm.")
    snr_gamma: float | None = option(None, "Min-SNR-γ loss weighting (Hang et al. 2023; 5 is their choice): caps the "
                                           "weight of nearly clean timesteps. Default: the plain, uniform loss.")
    multiscale_loss_weight: float = option(0.0, "Add this much of the multiscale loss (the error at 1/2, 1/4, ... "
                                                "of the resolution, down to the mean colour; Hoogeboom et al. 2023): "
                                                "on ph2-dev 0.25 cut samples of a colour real skin lacks from 15% to "
                                                "6% at the same KID, at lower recall (0.34 -> 0.28). 0 = off.")
    input_perturbation: float = option(0.0, "Perturb the noised training input by this much extra noise, the target "
                                            "unchanged (Ning et al. 2023): trains the network on inputs as imperfect "
                                            "as its own samples. On ph2-dev 0.2 cut held-out KID by ~30% on two "
                                            "seeds (configs/small-data.yaml); 0.5 broke the model. 0 = off.")
    dropout: float = option(0.0, "Dropout probability in the UNet's residual blocks while fine-tuning (Ho et al. "
                                 "used 0.1 on CIFAR-10); on ph2-dev 0.1 changed nothing beyond noise. 0 = off.")
    use_ema: bool = option(False, "Keep an exponential moving average of the weights and publish it.")
    ema_inv_gamma: float = option(1.0, "EMA warm-up inv_gamma.")
    ema_power: float = option(0.75, "EMA warm-up power (3/4 suits runs under ~100k steps).")
    ema_max_decay: float = option(0.9999, "EMA maximum decay.")
    mixed_precision: MixedPrecision | None = option(None, "Mixed precision (default: what `accelerate config` says).",
                                                    choices=values(MixedPrecision, without=(MixedPrecision.AUTO,)))
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")
    torch_compile: bool = option(False, "Compile the UNet with torch.compile: faster steps on a GPU once the first "
                                        "step has waited for the compiler (minutes for a 100 M UNet).")
    max_bad_steps: int = option(10, "Stop after this many consecutive steps with a NaN/Inf loss (each is skipped).")
    validation_data_dir: Path | None = option(None, "Held-out real images: at every checkpoint, KID of fixed-seed samples against them; the lowest marks the best checkpoint (sample it with --checkpoint best).")
    validation_num_images: int = option(64, "Samples scored at each checkpoint with --validation_data_dir.")
    validation_features: FeatureSpace = option(FeatureSpace.EFFICIENTNET, "Feature space of the checkpoint KID (efficientnet works offline).")
    max_copy_rate: float = option(0.01, "With --validation_data_dir: a checkpoint whose samples include more near copies of training images than this share is never the best checkpoint (validation.csv, validation.png show the copy rate).")
    choose_sampler: bool = option(True, "With --validation_data_dir: at the end, measure which sampler makes the "
                                        "final weights' images in the fewest steps as well as DDPM-50 does, against "
                                        "the validation images (`ddpm-lesion pick-sampler`), and write sampler.json "
                                        "so sample_ddpm.py uses it by default.")
    sampler_choice_images: int = option(500, "Images per sampler setting for --choose_sampler (pick-sampler's "
                                             "--num_images).")
    # Checkpoints, logging, samples
    checkpointing_steps: int = option(500, "Save a resumable checkpoint every N steps.")
    checkpoints_total_limit: int | None = option(None, "Keep only the newest N checkpoints.")
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoint folder; 'latest' starts fresh if there is none yet.")
    overwrite_output_dir: bool = option(False, "Start over in an --output_dir that already holds a run.")
    save_images_steps: int = option(500, "Save and log a grid of samples every N steps (and at the end).")
    num_sample_images: int = option(16, "Images in each sample grid.")
    sample_scheduler: SchedulerName = option(DEFAULT_SCHEDULER, "Sampler of the sample grids and of the "
                                                                "--validation_data_dir KID; the default is "
                                                                "sample_ddpm.py's, so the best checkpoint is "
                                                                "chosen by the images you will generate.")
    sample_inference_steps: int = option(DEFAULT_STEPS, "Steps of --sample_scheduler for the sample grids and the "
                                                        "checkpoint KID.")
    report_to: ReportTo = option(ReportTo.NONE, "Tracker for metrics and sample grids.")
    tracker_project_name: str | None = option(None, "wandb project / tensorboard run name (default: $WANDB_PROJECT, "
                                                    "else ddpm-lesion); every command's runs of this model are "
                                                    "grouped there under this run folder's name.")
    log_model: bool = option(False, "With --report_to wandb: log the final EMA pipeline (and the best checkpoint) as "
                                    "a `model` artifact, so samples and evaluations link to it. Off by default: "
                                    "the weights are uploaded on sync and can be large.")
    logging_dir: str = option("logs", "Tracker folder, relative to --output_dir.")
    dry_run: bool = option(False, "Check the data and print the resolved configuration, then exit.")


# What a resumed run may change (`ddpm_lesion.core.resume_guard`): how long it runs, how often
# it saves, validates or logs, where the cache is, and memory/speed switches that leave the
# arithmetic alone. Everything else must match the run it continues.
MAY_CHANGE_ON_RESUME = {"output_dir", "cache_dir", "num_epochs", "max_train_steps", "checkpointing_steps",
                        "checkpoints_total_limit", "resume_from_checkpoint", "overwrite_output_dir", "save_images_steps",
                        "num_sample_images", "sample_scheduler", "sample_inference_steps", "validation_data_dir",
                        "validation_num_images", "validation_features", "max_copy_rate", "choose_sampler",
                        "sampler_choice_images", "gradient_checkpointing", "torch_compile",
                        "max_bad_steps", "report_to", "tracker_project_name", "log_model", "logging_dir", "dry_run"}


def validate(cfg: TrainConfig) -> None:
    if cfg.output_dir is None:
        raise UserError("--output_dir is required: the run folder for checkpoints, samples and the final model.")
    if cfg.pretrained_model_name_or_path is None and cfg.model_config is None:
        raise UserError("--pretrained_model_name_or_path is required: a hub id in the Hugging Face cache such as "
                        "google/ddpm-ema-church-256 (128 px) or google/ddpm-cifar10-32 (32-64 px), or a folder "
                        "written by save_pretrained. To train from scratch instead, pass --model_config "
                        f"{'|'.join(PRESETS)}|config.json.")
    if cfg.pretrained_model_name_or_path is not None and cfg.model_config is not None:
        raise UserError("--pretrained_model_name_or_path and --model_config exclude each other: the first fine-tunes "
                        "a pretrained model, the second trains a new one from scratch. Give one of them.")
    if cfg.train_data_dir is None and cfg.dataset_name is None:
        raise UserError("give --train_data_dir (a folder of images, optionally with --labels_csv) or --dataset_name.")
    if not 0.0 <= cfg.max_copy_rate <= 1.0:
        raise UserError(f"--max_copy_rate is a share of the validation samples, 0 to 1; got {cfg.max_copy_rate}.")
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "save_images_steps",
                 "sampler_choice_images"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(cfg, name)}.")
    if cfg.snr_gamma is not None and cfg.snr_gamma <= 0:
        raise UserError(f"--snr_gamma must be positive (5 is the usual choice), got {cfg.snr_gamma}.")
    for name in ("multiscale_loss_weight", "input_perturbation"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name} must be 0 (off) or positive, got {getattr(cfg, name)}.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"--dropout is a probability from 0 (off) to below 1, got {cfg.dropout}.")
    for expr in cfg.label_filter:
        parse_filter(expr)


def prepare_run_dir(cfg: TrainConfig) -> None:
    """Refuse to mix two different runs in one folder (say which settings differ), then claim
    the folder by writing the configuration. Main process only (`run_on_main_process`): a
    process that checked after the main one's write would find a run that is not there."""
    run = cfg.output_dir
    saved = run / run_files.TRAIN_CONFIG
    if saved.is_file() and not cfg.overwrite_output_dir:
        if cfg.resume_from_checkpoint is None:
            raise UserError(f"{run} already holds a training run. Add --resume_from_checkpoint latest to continue "
                            "it, --overwrite_output_dir to start over there, or choose another --output_dir.")
        diffs = resume_differences(upgrade_saved_config(load_yaml(saved)), to_plain_dict(cfg), MAY_CHANGE_ON_RESUME)
        if diffs:
            raise UserError(f"cannot resume the run in {run}: these settings differ from {saved}: "
                            + "; ".join(diffs) + ". Use the original values or a new --output_dir.")
    run.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run)
    save_config(cfg, saved)


def upgrade_saved_config(saved: dict) -> dict:
    """A run saved before `--augmentation` replaced `--random_flip` records the same choice
    under the old name; translate it, so that resuming such a run with other augmentation is
    refused like any other change (the guard compares only the keys both records hold)."""
    if "random_flip" in saved and "augmentation" not in saved:
        saved = {**saved, "augmentation": "hflip" if saved["random_flip"] else "none"}
    return saved


def parameter_groups(unet: UNet2DModel, cfg: TrainConfig) -> list[dict]:
    """The pretrained weights at the fine-tuning rate; a newly added class embedding, which
    starts from zero and must be learned from scratch, at `--class_embedding_lr`."""
    new = [p for n, p in unet.named_parameters() if n.startswith("class_embedding.")]
    pretrained = [p for n, p in unet.named_parameters() if not n.startswith("class_embedding.")]
    groups = [{"params": pretrained}]
    if new:
        groups.append({"params": new, "lr": cfg.class_embedding_lr, "weight_decay": 0.0})
    return groups


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so Ctrl-C or a
    scheduler's pre-emption signal ends in a final checkpoint instead of lost work."""

    def __init__(self) -> None:
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def requested(self, accelerator: Accelerator) -> bool:
        """True on every rank if any rank was signalled, so all of them checkpoint together."""
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.gather(flag)
        return bool(flag.max() > 0)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.signal = signum


def sample_grid(unet: UNet2DModel, scheduler_config: dict, sampler: SchedulerName, num_images: int, steps: int,
                seed: int, class_names: list[str] | None) -> Image.Image:
    """A fixed-seed grid from the current weights, with the same noise every time so
    grids from different steps are comparable; for a conditional model, row r shows
    class r (cycling), guided with scale 1 (plain conditional prediction)."""
    ncols = math.ceil(math.sqrt(num_images))
    generators = image_generators(seed, range(num_images))
    noise = initial_noise(generators, (3, unet.config.sample_size, unet.config.sample_size))
    labels = None
    if class_names is not None:
        labels = torch.tensor([(i // ncols) % len(class_names) for i in range(num_images)])
    pixels = denoise(unet, make_scheduler(sampler, scheduler_config), noise, generators, steps, class_labels=labels)
    return make_grid(list(pixels.numpy()), ncols=ncols)


@dataclass
class TrainingData:
    images: torch.Tensor  # uint8 [N, 3, R, R] on the training device
    labels: torch.Tensor | None  # class index per image, for a class-conditional run
    class_names: list[str] | None


def load_data(cfg: TrainConfig, accelerator: Accelerator) -> TrainingData:
    """Decode once (cached), validate, report, and keep the images on the device as uint8."""
    # The main process decodes and caches; the others read its cache, or share its error.
    images, report, _, classes = main_process_first(accelerator, lambda: load_training_images(
        cfg.train_data_dir, cfg.labels_csv, [parse_filter(f) for f in cfg.label_filter], cfg.id_column,
        cfg.resolution, cfg.dataset_name, cfg.dataset_config_name, cfg.image_column, cfg.cache_dir,
        class_column=cfg.class_column,
    ))
    class_names = sorted(set(classes)) if classes is not None else None
    if class_names is not None:
        report.notes.append("classes: " + ", ".join(f"{c} ({classes.count(c)})" for c in class_names))
    accelerator.print(report.to_text())
    if accelerator.is_main_process and not cfg.dry_run:
        write_text_atomic(cfg.output_dir / run_files.DATA_REPORT_TEXT, report.to_text() + "\n")
        write_text_atomic(cfg.output_dir / run_files.DATA_REPORT_JSON, json.dumps(report.to_dict(), indent=2))
        if cfg.report_to is not ReportTo.NONE:
            start_trackers(cfg, accelerator)
            tracking.log_text(accelerator, "data_report", report.to_text())
            if cfg.report_to is ReportTo.WANDB:
                run = _wandb_run(accelerator)
                run.log({"data_report/table": wandb_review.table(
                    review_tables.DATA_REPORT_COLUMNS, review_tables.data_report_rows(report.to_dict()))})
                group = wandb_review.read_record(cfg.output_dir)["group"]  # written by start_trackers
                wandb_review.declare_input(run, wandb_review.data_report_artifact(group, cfg.output_dir))
    labels = (torch.tensor([class_names.index(c) for c in classes], device=accelerator.device)
              if class_names is not None else None)
    return TrainingData(images.to(accelerator.device), labels, class_names)


def start_trackers(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """Open the trackers (main process only). wandb's run is named and grouped after the
    run folder, job type train, its files under `--logging_dir` (`ddpm_lesion.core.wandb_review`)."""
    project = wandb_review.project_name(cfg.tracker_project_name)
    init_kwargs = {}
    if cfg.report_to is ReportTo.WANDB:
        log_dir = cfg.output_dir / cfg.logging_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs = wandb_review.train_init_kwargs(wandb_review.training_group(cfg.output_dir, project), log_dir)
    accelerator.init_trackers(project, config=to_plain_dict(cfg), init_kwargs=init_kwargs)


def _wandb_run(accelerator: Accelerator):
    return accelerator.get_tracker("wandb", unwrap=True)


def finish_wandb(cfg: TrainConfig, accelerator: Accelerator, step: int) -> None:
    """The checkpoint-validation table and, with --log_model, the model artifact (final
    EMA pipeline, alias final; best checkpoint, alias best): main process, end of training."""
    run, best = _wandb_run(accelerator), read_best(cfg.output_dir)
    best_step = None if best is None else best["step"]
    rows = review_tables.validation_rows(cfg.output_dir, best_step)
    if rows:
        run.log({"validation/table": wandb_review.table(review_tables.VALIDATION_COLUMNS, rows)}, step=step)
    if cfg.log_model:
        pipelines = {".": (cfg.output_dir, ["final", f"step-{step}"])}
        if best_step is not None:
            key = f"{run_files.CHECKPOINT_PREFIX}{best_step}/{run_files.CHECKPOINT_PIPELINE}"
            pipelines[key] = (cfg.output_dir / key, ["best", f"step-{best_step}"])
        group = wandb_review.read_record(cfg.output_dir)["group"]  # written by start_trackers
        wandb_review.log_models(run, cfg.output_dir, group, pipelines)


def build_model(cfg: TrainConfig, class_names: list[str] | None,
                device: torch.device) -> tuple[UNet2DModel, DDPMScheduler, EMAModel | None]:
    """The pretrained UNet (or, with `--model_config`, a new one from the seed; plus a class
    embedding for a conditional run), its noise schedule, and the EMA of its weights."""
    if cfg.model_config is not None:
        torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
        unet = unet_from_config(cfg.model_config)
        noise_scheduler = DDPMScheduler(num_train_timesteps=1000)  # diffusers' train_unconditional.py default
    else:
        unet = load_unet(cfg.pretrained_model_name_or_path, cfg.revision)
        noise_scheduler = load_noise_scheduler(cfg.pretrained_model_name_or_path, cfg.revision)
    check_resolution(unet, cfg.resolution)
    set_dropout(unet, cfg.dropout)
    if class_names is not None:
        unet = add_class_embedding(unet, len(class_names))
    unet.register_to_config(sample_size=cfg.resolution)  # pipelines then generate at the trained size
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # from_pretrained returns eval mode, which would leave --dropout off while training
    unet = unet.to(device, memory_format=torch.channels_last).train()
    if cfg.torch_compile:
        unet.compile()  # in place: the module, its state_dict keys and its checkpoints stay as they are
    ema = EMAModel(unet.parameters(), decay=cfg.ema_max_decay, use_ema_warmup=True, inv_gamma=cfg.ema_inv_gamma,
                   power=cfg.ema_power, foreach=True) if cfg.use_ema else None
    return unet, noise_scheduler, ema


def build_optimizer(cfg: TrainConfig, unet: UNet2DModel, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`. Its fused kernel (one pass over each weight per step)
    exists for CUDA and, since torch 2.4, CPUs; on the bench CPU it steps the 101 M UNet's
    weights 3x faster than torch's CPU default, the per-tensor loop (BENCHMARKS.md)."""
    return torch.optim.AdamW(parameter_groups(unet, cfg), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon,
                             fused=device.type in ("cuda", "cpu"))


def record_step(state: checkpoints.TrainerState, finite: bool, max_bad_steps: int) -> None:
    """Advance the step counter; count skipped (non-finite) steps and stop after too many in a row."""
    state.global_step += 1
    if finite:
        state.consecutive_bad_steps = 0
        return
    state.skipped_steps += 1
    state.consecutive_bad_steps += 1
    if state.consecutive_bad_steps >= max_bad_steps:
        raise UserError(
            f"training stopped at step {state.global_step}: {state.consecutive_bad_steps} steps in a row had a "
            "NaN/Inf loss or gradient (each was skipped; no NaN weights were saved). Likely causes: the "
            "learning rate is too high (try --learning_rate 1e-5), fp16 overflow (use --mixed_precision bf16 "
            "or no), or broken input data (see data_report.txt). Resume from the last good checkpoint with "
            "--resume_from_checkpoint latest after fixing it.")


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) a fine-tune; returns the run folder, which then loads with
    `DDPMPipeline.from_pretrained(run)`."""
    with same_on_every_process():
        validate(cfg)
    run = cfg.output_dir
    accelerator = Accelerator(
        cpu=use_cpu(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision.value if cfg.mixed_precision else None,
        log_with=None if cfg.report_to is ReportTo.NONE else cfg.report_to.value,
        project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run / cfg.logging_dir)),
    )
    check_process_count(accelerator.num_processes)
    say = accelerator.print
    say(f"ddpm-lesion: training on {accelerator.num_processes} process(es), device {accelerator.device}, "
        f"mixed precision {accelerator.mixed_precision}")
    if not cfg.dry_run:
        run_on_main_process(accelerator, lambda: prepare_run_dir(cfg))

    data = load_data(cfg, accelerator)
    if cfg.dry_run:
        say("\n".join(f"{k}: {v}" for k, v in to_plain_dict(cfg).items()))
        return run
    unet, noise_scheduler, ema = main_process_first(accelerator,
                                                    lambda: build_model(cfg, data.class_names, accelerator.device))
    if accelerator.is_main_process:
        base = model_card.record_base_model(run, cfg.pretrained_model_name_or_path, cfg.revision, cfg.model_config,
                                            accelerator.unwrap_model(unet), noise_scheduler)
        if base.get("from_scratch"):
            say(f"warning: {FROM_SCRATCH_WARNING}")
    optimizer = build_optimizer(cfg, unet, accelerator.device)
    images, labels, class_names = data.images, data.labels, data.class_names
    per_epoch = batching.steps_per_epoch(len(images), cfg.train_batch_size, accelerator.num_processes,
                                         cfg.gradient_accumulation_steps)
    max_steps = cfg.max_train_steps or per_epoch * cfg.num_epochs
    # Accelerate steps a prepared LR scheduler once per process per optimizer step.
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer,
                                 num_warmup_steps=cfg.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_steps * accelerator.num_processes)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    state = checkpoints.TrainerState()
    if cfg.resume_from_checkpoint:
        path = run_on_main_process(accelerator, lambda: checkpoints.find_checkpoint(run, cfg.resume_from_checkpoint))
        if path is None:
            say(f"no checkpoint in {run} yet: starting a fresh run")
        else:
            state = checkpoints.load_checkpoint(accelerator, path, unet, ema)
            say(f"resumed from {path} at step {state.global_step}")
    metrics = tracking.MetricsLog(run / run_files.METRICS_CSV)
    if accelerator.is_main_process:
        metrics.truncate_after(state.global_step)

    say(f"{len(images)} images, {per_epoch} steps per epoch, {max_steps} steps "
        f"(batch {cfg.train_batch_size} x {accelerator.num_processes} processes x {cfg.gradient_accumulation_steps} accumulation)")
    validator = None
    if cfg.validation_data_dir is not None and accelerator.is_main_process:
        validator = CheckpointValidator(cfg.validation_data_dir, cfg.resolution, cfg.validation_num_images,
                                        cfg.validation_features, cfg.sample_scheduler, cfg.sample_inference_steps,
                                        cfg.seed, accelerator.device,
                                        images.permute(0, 2, 3, 1).cpu().numpy())
        for warning in validator.warnings:
            say(f"warning: {warning}")
    stop = StopRequest()
    progress = tqdm(total=max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process,
                    desc="training", unit="step", dynamic_ncols=True)
    started, first_step = time.perf_counter(), state.global_step
    while state.global_step < max_steps:
        loss, grad_norm, finite = train_step(cfg, accelerator, unet, optimizer, lr_scheduler, noise_scheduler,
                                             images, labels, state.global_step)
        record_step(state, finite, cfg.max_bad_steps)
        if finite and ema is not None:
            ema.step(accelerator.unwrap_model(unet).parameters())
        row = {"step": state.global_step, "epoch": f"{state.global_step / per_epoch:.4f}", "loss": f"{loss:.6g}",
               "lr": f"{lr_scheduler.get_last_lr()[0]:.6g}", "grad_norm": f"{grad_norm:.6g}",
               "skipped_steps": state.skipped_steps}
        images_per_sec = ((state.global_step - first_step) * cfg.train_batch_size * accelerator.num_processes
                          * cfg.gradient_accumulation_steps / (time.perf_counter() - started))
        if accelerator.is_main_process:
            metrics.append(row)
        accelerator.log({"loss": loss, "lr": float(row["lr"]), "grad_norm": grad_norm,
                         "images_per_sec": images_per_sec, "skipped_steps": state.skipped_steps},
                        step=state.global_step)
        progress.update(1)
        progress.set_postfix(loss=row["loss"], lr=row["lr"], img_s=f"{images_per_sec:.1f}")

        done = state.global_step >= max_steps
        stopping = stop.requested(accelerator)
        if done or stopping or state.global_step % cfg.checkpointing_steps == 0:
            path = checkpoints.save_checkpoint(accelerator, run, state, accelerator.unwrap_model(unet), ema,
                                               noise_scheduler, cfg.checkpoints_total_limit, class_names)
            if accelerator.is_main_process:
                tracking.plot_loss(metrics, run / run_files.LOSS_PLOT)
                if validator is not None:
                    validate_checkpoint(validator, accelerator, run, unet, ema, noise_scheduler, state.global_step,
                                        class_names, progress.write, cfg.max_copy_rate)
                    model_card.write_model_card(run)  # the best checkpoint so far, as soon as it is known
                    checkpoints.rotate_checkpoints(run, cfg.checkpoints_total_limit)  # a new best frees the old one
            progress.write(f"saved {path}")
        if accelerator.is_main_process and (done or state.global_step % cfg.save_images_steps == 0):
            save_samples(cfg, accelerator, unet, ema, noise_scheduler, state.global_step, class_names)
        if stopping and not done:
            progress.close()
            raise UserError(f"interrupted by signal {stop.signal} at step {state.global_step}; the checkpoint is "
                            f"saved. Rerun the same command with --resume_from_checkpoint latest to continue.")
    progress.close()

    if accelerator.is_main_process:
        publish_final(run, max_steps)
    if cfg.validation_data_dir is not None and cfg.choose_sampler:
        choose_sampler(cfg, accelerator, class_names)
    if accelerator.is_main_process:
        model_card.write_model_card(run)  # after the sampler choice, so the card names the sampler to use
        if cfg.report_to is ReportTo.WANDB:
            finish_wandb(cfg, accelerator, max_steps)
        say(f"done: {max_steps} steps. Pipeline: DDPMPipeline.from_pretrained('{run}'); "
            f"samples in {run / 'samples'}, loss curve {run / 'loss.png'}")
    # Not `end_training()`: it also destroys the process group, which a caller such as
    # `ddpm-lesion balance` still needs for sampling right after training.
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.wait_for_everyone()  # every rank returns only once the final model is on disk
    return run


def train_step(cfg: TrainConfig, accelerator: Accelerator, unet, optimizer, lr_scheduler, noise_scheduler,
               images: torch.Tensor, labels: torch.Tensor | None, step: int) -> tuple[float, float, bool]:
    """One optimizer step over `gradient_accumulation_steps` micro-batches.

    The loss of every micro-batch is gathered from all ranks *before* backward: if any
    rank sees NaN/Inf, every rank skips the backward pass and the update together (a
    rank that skipped alone would deadlock DDP's gradient all-reduce).
    """
    losses, finite = [], True
    for micro in range(cfg.gradient_accumulation_steps):
        micro_step = step * cfg.gradient_accumulation_steps + micro
        index = batching.micro_batch_indices(len(images), cfg.train_batch_size, micro_step, accelerator.process_index,
                                             accelerator.num_processes, cfg.seed)
        generator = batching.slot_generator(cfg.seed, micro_step, accelerator.process_index, accelerator.num_processes)
        clean = augment(images[index.to(images.device)], generator, cfg.augmentation)
        clean = clean.contiguous(memory_format=torch.channels_last)
        class_labels = None
        if labels is not None:
            null = accelerator.unwrap_model(unet).config.num_class_embeds - 1
            class_labels = drop_labels(labels[index.to(labels.device)], cfg.label_dropout, null, generator)
        with accelerator.accumulate(unet):
            loss = diffusion_loss(unet, noise_scheduler, clean, generator, class_labels, cfg.snr_gamma,
                                  cfg.multiscale_loss_weight, cfg.input_perturbation)
            all_losses = accelerator.gather(loss.detach().reshape(1))
            if not torch.isfinite(all_losses).all():
                finite = False
                continue
            losses.append(all_losses.mean().item())
            accelerator.backward(loss)
    grad_norm = float("nan")
    if finite:
        grad_norm = float(accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm))
        finite = math.isfinite(grad_norm)
        # fp16's GradScaler must see overflowing steps (it skips them and lowers the
        # scale); without a scaler a non-finite gradient must never reach AdamW.
        if finite or accelerator.scaler is not None:
            optimizer.step()
            finite = finite and not optimizer.step_was_skipped
    optimizer.zero_grad(set_to_none=True)
    lr_scheduler.step()
    loss = sum(losses) / len(losses) if finite and losses else float("nan")
    return loss, grad_norm, finite


def validate_checkpoint(validator: CheckpointValidator, accelerator: Accelerator, run: Path, unet,
                        ema: EMAModel | None, noise_scheduler, step: int, class_names: list[str] | None,
                        say: Callable[[str], None], max_copy_rate: float) -> None:
    """Score the just-saved weights (EMA when on) and keep track of the best checkpoint."""
    exported = checkpoints.export_unet(accelerator.unwrap_model(unet), ema).to(accelerator.device)
    score = validator.score(exported, noise_scheduler.config, step, len(class_names) if class_names else None)
    best = record_validation(run, score, max_copy_rate)
    accelerator.log({"validation/kid": score.kid, "validation/kid_ci_low": score.ci_low,
                     "validation/kid_ci_high": score.ci_high, "validation/copy_rate": score.copy_rate}, step=step)
    say(f"step {step}: KID ({score.feature_space}) {score.kid:.4g} [{score.ci_low:.4g}, {score.ci_high:.4g}], "
        f"{score.copy_rate:.1%} near copies" + (" - best so far" if best else
                                              " - over --max_copy_rate" if score.copy_rate > max_copy_rate else ""))


def save_samples(cfg: TrainConfig, accelerator: Accelerator, unet, ema: EMAModel | None, noise_scheduler,
                 step: int, class_names: list[str] | None) -> None:
    exported = checkpoints.export_unet(accelerator.unwrap_model(unet), ema)
    grid = sample_grid(exported, noise_scheduler.config, cfg.sample_scheduler, cfg.num_sample_images,
                       cfg.sample_inference_steps, cfg.seed, class_names)
    write_bytes_atomic(cfg.output_dir / run_files.SAMPLES_DIR / f"step-{step:07d}.png", encode_png(grid))
    tracking.log_image(accelerator, "samples", grid, step)


def choose_sampler(cfg: TrainConfig, accelerator: Accelerator, class_names: list[str] | None) -> None:
    """`pick-sampler` on the final EMA pipeline against the validation images, so the run
    folder says which sampler reaches DDPM-50's quality fastest (`sampler.json`, read by
    sample_ddpm.py) without a separate command. It generates through `sample_ddpm`'s
    distributed generation, whose barriers every rank would have to join, so under several
    processes, and for a class-conditional model (measured per class), it says how to run
    it instead."""
    command = (f"ddpm-lesion pick-sampler --model_dir {cfg.output_dir} --real_dir {cfg.validation_data_dir} "
               f"--features {cfg.validation_features.value}")
    if accelerator.num_processes > 1 or class_names is not None:
        why = "several processes" if accelerator.num_processes > 1 else "a class-conditional model"
        accelerator.print(f"sampler choice skipped ({why}); run it with: {command}"
                          + (" --class_label CLASS" if class_names is not None else ""))
        return
    record = pick_sampler(PickSamplerConfig(model_dir=str(cfg.output_dir), real_dir=cfg.validation_data_dir,
                                            features=cfg.validation_features, num_images=cfg.sampler_choice_images,
                                            resolution=cfg.resolution, seed=cfg.seed))
    accelerator.print(f"sampler: {record['scheduler']}, {record['num_inference_steps']} steps "
                      f"({record['speed_up_vs_reference']:.1f}x fewer network calls than "
                      f"{record['reference']['setting']}, chosen in {record['seconds'] / 60:.1f} min; "
                      f"{run_files.PICKED_SAMPLER}, report {record['report']}). Re-check later with: {command}")


def publish_final(run: Path, step: int) -> None:
    """The last checkpoint's pipeline at the top of the run folder, diffusers' convention."""
    checkpoints.publish_pipeline(run / f"{run_files.CHECKPOINT_PREFIX}{step}" / run_files.CHECKPOINT_PIPELINE, run)
