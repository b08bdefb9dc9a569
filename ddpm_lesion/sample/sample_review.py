"""What `sample_ddpm.py --report_to wandb` logs: a run of job type `sample` in the model's
group that declares the model it used and logs the generated set as a `dataset` artifact,
with a table of up to `--log_images` generated images beside their nearest training image.

The model is declared by artifact when its training run logged one (`--log_model`), and is
always named by the weights' sha256 in the run config (the same fingerprint every PNG
carries), so a sample run links to its model either way. The nearest training images come
from the training run's own `train_config.yaml`; for a model trained elsewhere the table
shows provenance only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpm_lesion.core import wandb_review
from ddpm_lesion.core.config import to_plain_dict
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.data.evaluation_sets import ImageSet
from ddpm_lesion.evaluate import review_tables
from ddpm_lesion.sample.copy_rejection import recorded_training_selection
from ddpm_lesion.sample.output_folder import OutputLayout
from ddpm_lesion.sample.sample_config import SampleConfig


def training_images(pipeline_dir: str) -> tuple[ImageSet | None, str]:
    """The images the model was fine-tuned on (from its training run folder), and a note."""
    run, selection = recorded_training_selection(pipeline_dir)
    if run is None:
        return None, "not a training run folder: nearest training images unknown"
    if selection is None:
        return None, "trained from --dataset_name: nearest training images not looked up"
    try:
        images = selection.load("train")
    except UserError as err:
        return None, f"training images not readable here: {err}"
    return images, f"{len(images.paths)} training images from {images.folder}"


def log_run(cfg: SampleConfig, layout: OutputLayout, grids: list[Path], made: int, images_per_second: float,
            source: str, settings: dict[str, str]) -> None:
    """One `sample` run (main process only; honours WANDB_MODE=offline)."""
    group = wandb_review.group_of(source)
    run = wandb_review.start_run(wandb_review.JobType.SAMPLE, cfg.tracker_project_name, group,
                                 {**to_plain_dict(cfg), "model_source": source,
                                  "model_sha256": settings["model_sha256"]})
    run.config["model_artifact"] = wandb_review.declare_model(run, source)
    train, note = training_images(source)
    run.config["nearest_train"] = note
    indices = [i for i in range(min(cfg.log_images, cfg.num_images)) if layout.image_path(i).is_file()]
    paths = [layout.image_path(i) for i in indices]
    audit = review_tables.sample_audit(paths, None if train is None else train.pixels)
    sampler = f"{cfg.scheduler.value}-{cfg.num_inference_steps}"
    rows = review_tables.sample_rows(indices, paths, cfg.seed, sampler, cfg.class_label,
                                     None if train is None else train.paths, audit)
    logged: dict[str, Any] = {f"grids/{path.stem}": wandb_review.image_cell(path) for path in grids}
    logged.update({"samples/table": wandb_review.table(review_tables.SAMPLE_COLUMNS, rows),
                   "images": made, "images_per_second": images_per_second})
    if audit is not None:
        logged["samples/copy_rate"] = audit.copy_rate
    run.log(logged)
    run.log_artifact(wandb_review.samples_artifact(layout.root)[0])
    run.finish()
