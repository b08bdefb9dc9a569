"""One wandb dashboard per model: the conventions every command follows when it logs to wandb.

A reviewer opens one project and sees, per model, a group of runs (the training run's name)
with one `job_type` per command, linked by artifacts so the lineage graph reads
model -> samples -> evaluation:

- project: `--tracker_project_name`, else `$WANDB_PROJECT`, else "ddpm-lesion";
- group: the training run folder's name, recorded in `RUN/wandb.json` so that sampling and
  evaluation (which only see a model folder or a samples folder) find it again;
- artifacts: `model-<group>` (the final EMA pipeline, alias `final`; the best checkpoint,
  alias `best`) and `samples-<group>-<folder>` (a generated set, by reference: paths and
  manifest, not a copy of every PNG unless asked).

wandb refuses `use_artifact` offline, yet "offline first" is the point (clusters without
internet, `wandb sync` later). A run therefore declares an input by logging the same files
as a draft artifact with `use_after_commit`, which is exactly what wandb's own
`use_artifact(draft)` does online: same files, same digest, so on sync the server resolves
it to the version the producing run logged and records the use edge.

wandb is imported inside the functions that need it: nothing here loads it on the core path.
"""

from __future__ import annotations

import argparse
import enum
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from ddpm_lesion.core import run_files
from ddpm_lesion.core.config import load_yaml
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import write_text_atomic
from ddpm_lesion.core.options import ReportTo, values

DEFAULT_PROJECT = "ddpm-lesion"
PIPELINE_FILES = ("model_index.json", run_files.CLASS_LABELS)
PIPELINE_FOLDERS = ("unet", "scheduler")


class JobType(str, enum.Enum):
    TRAIN = "train"
    SAMPLE = "sample"
    EVALUATE = "evaluate"
    PICK_SAMPLER = "pick-sampler"
    BALANCE = "balance"
    UTILITY = "utility"


def project_name(flag: str | None) -> str:
    """The one project every command logs to."""
    return flag or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


def _slug(text: str) -> str:
    """An artifact name part: wandb allows letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "unnamed"


def data_artifact_name(group: str) -> str:
    return f"data-{_slug(group)}"


def model_artifact_name(group: str) -> str:
    return f"model-{_slug(group)}"


def samples_artifact_name(group: str | None, samples_dir: Path) -> str:
    return f"samples-{_slug(group or 'unknown-model')}-{_slug(Path(samples_dir).resolve().name)}"


# ------------------------------------------------------------------ the run folder's record

def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / run_files.WANDB_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_record(run_dir: Path, record: dict[str, Any]) -> None:
    write_text_atomic(Path(run_dir) / run_files.WANDB_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")


def training_run_of(pipeline_dir: str | Path) -> Path | None:
    """The training run folder a pipeline folder belongs to: the run itself (its final
    pipeline) or the run holding `checkpoint-STEP/pipeline`; None for any other model."""
    path = Path(pipeline_dir)
    for candidate in (path, path.parent.parent):
        if (candidate / run_files.TRAIN_CONFIG).is_file():
            return candidate
    return None


def group_of(model_dir: str | Path) -> str:
    """The group of every run about this model: the recorded training run name, else the
    run folder's name, else the model folder's (or hub id's) last part."""
    run = training_run_of(model_dir)
    if run is None:
        return str(model_dir).rstrip("/").split("/")[-1]
    record = read_record(run)
    return record["group"] if record else run.resolve().name


def training_group(run_dir: Path, project: str | None) -> str:
    """The group of a training run (kept when it resumes), written to `RUN/wandb.json`."""
    record = read_record(run_dir) or {"group": Path(run_dir).resolve().name}
    record["project"] = project_name(project)
    write_record(run_dir, record)
    return record["group"]


def train_init_kwargs(group: str, log_dir: Path) -> dict[str, Any]:
    """Accelerate's `init_trackers(init_kwargs=...)` for the training run of `group`; its
    files go to `$WANDB_DIR` when set (the user chose), else the run folder's `log_dir`."""
    kwargs = {"group": group, "job_type": JobType.TRAIN.value, "name": group}
    if not os.environ.get("WANDB_DIR"):
        kwargs["dir"] = str(log_dir)
    return {"wandb": kwargs}


# ------------------------------------------------------------------ the commands' flags

def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """`--report_to` and `--tracker_project_name` for a sub-command that logs one run."""
    parser.add_argument("--report_to", choices=values(ReportTo, without=(ReportTo.TENSORBOARD,)),
                        default=ReportTo.NONE.value,
                        help=f"Also log {what} to this tracker (default: none; wandb honours WANDB_MODE=offline).")
    parser.add_argument("--tracker_project_name", default=None,
                        help=f"wandb project (default: $WANDB_PROJECT, else {DEFAULT_PROJECT}); the run joins its "
                             "model's group there.")


def wanted(report_to: str | ReportTo) -> bool:
    """Does the command log to wandb? Checked before the work starts, so a missing package
    fails in a second, not after an hour of sampling."""
    if ReportTo(report_to) is not ReportTo.WANDB:
        return False
    if importlib.util.find_spec("wandb") is None:
        raise UserError("--report_to wandb needs the wandb package. Fix: pip install wandb, or --report_to none.")
    return True


# ------------------------------------------------------------------ runs and artifacts

def start_run(job_type: JobType, project: str | None, group: str | None, config: dict[str, Any],
              directory: Path | None = None, name: str | None = None) -> Any:
    """A wandb run of one command (honours WANDB_MODE=offline; files under WANDB_DIR or
    `directory`)."""
    import wandb

    return wandb.init(project=project_name(project), group=group, job_type=job_type.value, name=name,
                      config=config, dir=None if directory is None else str(directory))


def pipeline_files(pipeline_dir: Path) -> list[Path]:
    """The files that are the model (weights, configs, class names), not the records that
    later commands add beside them (sampler.json), so the model artifact's digest changes
    only when the model does."""
    pipeline_dir = Path(pipeline_dir)
    files = [pipeline_dir / name for name in PIPELINE_FILES if (pipeline_dir / name).is_file()]
    for folder in PIPELINE_FOLDERS:
        files += sorted(p for p in (pipeline_dir / folder).rglob("*") if p.is_file())
    return files


def model_artifact(group: str, pipeline_dir: Path, metadata: dict[str, Any] | None = None) -> Any:
    import wandb

    artifact = wandb.Artifact(model_artifact_name(group), type="model", metadata=metadata)
    for path in pipeline_files(pipeline_dir):
        artifact.add_file(str(path), name=path.relative_to(pipeline_dir).as_posix())
    return artifact


def log_models(run: Any, run_dir: Path, group: str, pipelines: dict[str, tuple[Path, list[str]]]) -> None:
    """Log each pipeline (key: its folder relative to the run, e.g. "." or
    "checkpoint-40/pipeline") as a version of the run's model artifact with its aliases,
    and record name and digest in `RUN/wandb.json` so sampling can declare it."""
    record = read_record(run_dir) or {"group": group}
    models = record.setdefault("models", {})
    for key, (folder, aliases) in pipelines.items():
        artifact = model_artifact(group, folder, {"pipeline": key})
        run.log_artifact(artifact, aliases=aliases)
        models[key] = {"name": artifact.name, "digest": artifact.manifest.digest()}
    write_record(run_dir, record)


def declare_input(run: Any, artifact: Any) -> None:
    """Mark `artifact` (a draft with the same files as the logged version) as an input of
    `run`, online or offline (see the module docstring for why offline needs this path)."""
    if run.offline:
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)


def data_report_artifact(group: str, run_dir: Path) -> Any:
    """The training data as the run found it (`data_report.json`/`.txt`: what was used,
    skipped, converted): the first node of a model's lineage, data report -> model."""
    import wandb

    report = json.loads((run_dir / run_files.DATA_REPORT_JSON).read_text(encoding="utf-8"))
    artifact = wandb.Artifact(data_artifact_name(group), type="dataset",
                              metadata={key: report.get(key) for key in ("source", "rows", "found", "used")})
    for name in (run_files.DATA_REPORT_JSON, run_files.DATA_REPORT_TEXT):
        artifact.add_file(str(run_dir / name), name=name)
    return artifact


def declare_model(run: Any, pipeline_dir: str) -> str | None:
    """Declare the model a sampling run used when its training run logged it (`--log_model`).
    Returns the artifact name, or None when there is none (or the weights changed since),
    in which case the weights' sha256 in the run config is the link."""
    run_dir = training_run_of(pipeline_dir)
    record = read_record(run_dir) if run_dir is not None else None
    if record is None:
        return None
    key = Path(pipeline_dir).resolve().relative_to(run_dir.resolve()).as_posix()
    logged = record.get("models", {}).get(key)
    if logged is None:
        return None
    artifact = model_artifact(record["group"], Path(pipeline_dir))
    if artifact.manifest.digest() != logged["digest"]:
        return None
    declare_input(run, artifact)
    return artifact.name


def samples_folder_of(folder: Path) -> Path | None:
    """The `sample_ddpm.py` output folder that `folder` is (or whose `individual/` it is)."""
    for root in (Path(folder), Path(folder).parent):
        if (root / run_files.SAMPLE_CONFIG).is_file() and (root / run_files.SAMPLE_IMAGES_DIR).is_dir():
            return root
    return None


def samples_artifact(root: Path) -> tuple[Any, str]:
    """A generated set as a `dataset` artifact, and its model's group: the images by
    reference (their paths and checksums; copies when it was sampled with
    `--upload_images`), plus the manifest and config themselves. Built from the folder
    alone, so evaluation rebuilds exactly what sampling logged."""
    import wandb

    individual, config = root / run_files.SAMPLE_IMAGES_DIR, root / run_files.SAMPLE_CONFIG
    recorded = load_yaml(config)
    group = group_of(recorded["model_dir"])
    artifact = wandb.Artifact(samples_artifact_name(group, root), type="dataset",
                              metadata={"num_images": recorded.get("num_images"), "model_dir": recorded["model_dir"]})
    if recorded.get("upload_images"):
        artifact.add_dir(str(individual), name=run_files.SAMPLE_IMAGES_DIR)
    else:
        count = sum(1 for _ in individual.iterdir())
        artifact.add_reference(individual.resolve().as_uri(), name=run_files.SAMPLE_IMAGES_DIR, max_objects=count + 1)
    for path in (root / run_files.SAMPLE_MANIFEST, config):
        if path.is_file():
            artifact.add_file(str(path), name=path.name)
    return artifact, group


def image_cell(path: Path | None) -> Any:
    """A table cell showing the image at `path` (empty when there is none)."""
    import wandb

    return wandb.Image(str(path)) if path is not None else None


def table(columns: list[str], rows: list[list[Any]]) -> Any:
    import wandb

    return wandb.Table(columns=columns, data=rows)


def log_command_run(job_type: JobType, project: str | None, group: str | None, config: dict[str, Any], *,
                    models: tuple[str, ...] = (), sample_sets: tuple[Path, ...] = (),
                    scalars: dict[str, float] | None = None, summary: dict[str, Any] | None = None,
                    tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
                    images: dict[str, Path] | None = None) -> None:
    """One run of a command that ends with a result (pick-sampler, utility, balance): it
    declares the models and sample sets it read, then logs its numbers, tables and pictures."""
    run = start_run(job_type, project, group, config)
    for model in models:
        declare_model(run, model)
    for root in sample_sets:
        if samples_folder_of(root) is not None:
            declare_input(run, samples_artifact(root)[0])
    logged: dict[str, Any] = dict(scalars or {})
    logged.update({key: table(columns, rows) for key, (columns, rows) in (tables or {}).items()})
    logged.update({key: image_cell(path) for key, path in (images or {}).items() if path.is_file()})
    run.log(logged)
    run.summary.update(summary or {})
    run.finish()
