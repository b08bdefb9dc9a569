"""The options of `sample_ddpm.py`: one dataclass that is the flags, the YAML and the
record saved next to the images (`OUT/sample_config.yaml`)."""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path

from ddpm_lesion.core.config import option
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.options import MixedPrecision, ReportTo, values
from ddpm_lesion.sample.samplers import DEFAULT_SCHEDULER, DEFAULT_STEPS, SchedulerName
from ddpm_lesion.sample.sharding import parse_shard


class CompileMode(str, enum.Enum):
    """`torch.compile` modes for the network; `reduce-overhead` adds CUDA graphs on a GPU."""

    NO = "no"
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"
    MAX_AUTOTUNE = "max-autotune"


@dataclasses.dataclass
class SampleConfig:
    model_dir: str | None = option(None, "Training run folder (its final pipeline, or see --checkpoint), any "
                                         "DDPMPipeline folder, or a hub id already in the HF cache.")
    checkpoint: str | None = option(None, "Sample from a run's checkpoint instead of its final pipeline: "
                                          "'latest' or a step number.", metavar="latest|STEP")
    output_dir: Path | None = option(None, "Where individual/, grids/, manifest.csv and sample_config.yaml go.")
    num_images: int = option(5900, "How many images (indices 0 .. num_images-1).")
    batch_size: int | None = option(None, "Images per network call (default: automatic -- on a GPU the largest power "
                                          "of two that fits its free memory, up to --max_batch_size; on a CPU 16). "
                                          "Part of an image's identity: float rounding depends on the batch, so a "
                                          "folder records it and a resumed run reuses it.", metavar="N")
    max_batch_size: int = option(256, "Ceiling of the automatic --batch_size.")
    scheduler: SchedulerName | None = option(None, "Sampler, configured from the model's own noise schedule "
                                                   "(default: automatic -- the model's own: the one it was "
                                                   "distilled for (distilled.json), else the one `ddpm-lesion "
                                                   "pick-sampler` measured as good as DDPM-50 on these weights "
                                                   f"(sampler.json), else {DEFAULT_SCHEDULER.value}). The folder "
                                                   "records the resolved value.")
    num_inference_steps: int | None = option(None, "Network calls per image (default: automatic, with --scheduler: "
                                                   f"the model's own count, else {DEFAULT_STEPS}). How few a model "
                                                   "tolerates depends on the model: measure it with `ddpm-lesion "
                                                   "pick-sampler`. A distilled model gives poor images at any other "
                                                   "count. The folder records the resolved value.", metavar="N")
    mixed_precision: MixedPrecision = option(MixedPrecision.AUTO, "Run the network under fp16/bf16 autocast; the "
                                                                  "sampler arithmetic stays fp32. auto: bf16 where "
                                                                  "the device runs it natively (Ampere+ GPUs, CPUs "
                                                                  "with AVX512-BF16/AMX), else no. The folder "
                                                                  "records the resolved value.")
    torch_compile: CompileMode = option(CompileMode.NO, "Compile the network with torch.compile in this mode "
                                                        "(reduce-overhead: with CUDA graphs on a GPU). Pays off over "
                                                        "thousands of images; the first batch waits for the "
                                                        "compiler. Changes float rounding, so a folder keeps one mode.")
    class_label: str | None = option(None, "For a class-conditional model: the class to generate (a name from "
                                           "its class_labels.json).", metavar="NAME")
    guidance_scale: float = option(1.0, "Classifier-free guidance weight for a class-conditional model (Ho & "
                                        "Salimans 2022): 1 = plain conditional prediction; larger trades "
                                        "diversity for class fidelity and costs a second network pass.")
    seed: int = option(0, "Image i is drawn from a generator seeded by (seed, i).")
    output_size: int | None = option(None, "Resize the sampled images to this width with Lanczos. Upsampling "
                                           "adds no detail; for native 128 px, train at 128.")
    prefix: str = option("synthetic", "File names are <prefix>_<index>.png.")
    shard: str | None = option(None, "Make only part K/N of the images (0 <= K < N), e.g. one task of a "
                                     "SLURM array; all N parts together equal one full run.", metavar="K/N")
    overwrite: bool = option(False, "Write into an output folder that holds other files or images made with "
                                    "other settings: deletes this tool's earlier outputs there (never other "
                                    "files) and starts over.")
    reject_copies: Path | None = option(None, "Check every image against the training images in this folder before "
                                              "it is written: a near copy is not written, and its slot takes the "
                                              "next image of a reserved index range (recorded in rejected.csv). "
                                              "Default: the images a training run of --model_dir records in its "
                                              "train_config.yaml, when they are on this machine.",
                                        metavar="TRAIN_DIR")
    no_reject_copies: bool = option(False, "Write near copies of training images as sampled: no check, not even "
                                           "the default one of a training run's own images.")
    train_csv: Path | None = option(None, "With --reject_copies: labels CSV selecting the training images (with "
                                          "--label_filter), as for training.", metavar="CSV")
    label_filter: list[str] = option([], "COLUMN=VALUE row filter for --train_csv; repeat to combine.",
                                     metavar="COL=VAL")
    id_column: str | None = option(None, "Id column of --train_csv, if not the layout's default.")
    report_to: ReportTo = option(ReportTo.NONE, "Also log to wandb (honours WANDB_MODE=offline): the preview grids, "
                                                "a table of generated images beside their nearest training image, "
                                                "and the set as a dataset artifact linked to its model.",
                                 choices=values(ReportTo, without=(ReportTo.TENSORBOARD,)))
    tracker_project_name: str | None = option(None, "wandb project (default: $WANDB_PROJECT, else ddpm-lesion); "
                                                    "the run joins its model's group there.")
    log_images: int = option(64, "With --report_to wandb: generated images in the review table (the first N).")
    upload_images: bool = option(False, "With --report_to wandb: upload copies of the PNGs in the dataset artifact "
                                        "instead of referencing their paths and checksums.")


# What may differ between runs writing into one output folder (`ddpm_lesion.core.resume_guard`):
# which model folder or shard, how many images in all, where to report. The model itself is
# checked through the images' own metadata (`output_folder.IDENTITY_KEYS`); every other option
# changes an image's pixels or name, so it must match (--no_reject_copies through the
# --reject_copies it resolves to).
MAY_CHANGE_ON_RESUME = {"model_dir", "checkpoint", "output_dir", "num_images", "max_batch_size", "shard", "overwrite",
                        "report_to", "tracker_project_name", "log_images", "upload_images", "no_reject_copies"}


def validate(cfg: SampleConfig) -> None:
    """Reject settings that cannot work, before any model is loaded."""
    if not cfg.model_dir:
        raise UserError("--model_dir is required: a training run folder, a DDPMPipeline folder or a hub id.")
    if cfg.output_dir is None:
        raise UserError("--output_dir is required.")
    for name in ("num_images", "batch_size", "max_batch_size", "num_inference_steps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(cfg, name)}.")
    if cfg.guidance_scale < 0:
        raise UserError(f"--guidance_scale must be >= 0, got {cfg.guidance_scale}.")
    if cfg.output_size is not None and cfg.output_size <= 0:
        raise UserError(f"--output_size must be a positive number of pixels, got {cfg.output_size}.")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", cfg.prefix):
        raise UserError(f"--prefix {cfg.prefix!r}: use letters, digits, '.', '_' or '-' (it becomes a file name).")
    parse_shard(cfg.shard)
    if cfg.no_reject_copies and cfg.reject_copies is not None:
        raise UserError("--no_reject_copies and --reject_copies contradict each other; give one.")
    if cfg.reject_copies is None and (cfg.train_csv is not None or cfg.label_filter):
        raise UserError("--train_csv and --label_filter select the training images of --reject_copies; give "
                        "--reject_copies TRAIN_DIR too.")
    if cfg.overwrite and cfg.shard is not None:
        raise UserError("--overwrite cannot be combined with --shard: each shard job would delete the images the "
                        "others made. Empty the output folder once, then start the shards without --overwrite.")
