"""`ddpm-lesion balance`: top up the rare classes of a labelled training set with synthetic images.

Four stages; a rerun of the same command skips or resumes each one:

1. plan (`balance_plan`, main process): each training row's class, the synthetic images per
   class, and with `--dedupe` the near-duplicate images left out of fine-tuning (`dedupe`)
   -> `OUT/plan.json`, `OUT/balance_config.yaml`, and `OUT/train_rows.csv`, the rows fine-tuning
   sees (the training split minus the duplicates, one `class` column). A rerun reuses the plan
   when it comes out the same, and refuses changed settings or a changed labels CSV.
2. fine-tune (`training.train`, resumed with `--resume_from_checkpoint latest`, a no-op when
   finished): one class-conditional model `OUT/model/` (default), or with `--mode per_class`
   one unconditional model per class to top up, `OUT/model/<class>/`.
3. generate (`generation.generate`, which resumes by itself): `OUT/generated/<class>/`.
4. collect (main process): the synthetic PNGs copied to `OUT/images/<id>.png`, and
   `OUT/labels.csv`: the input's rows, then one row per synthetic image, in the input's layout
   plus the columns `synthetic` (0/1) and `source_model` (`<model folder>@sha256:<weights>`).

Synthetic rows only ever join the training split, and the plan counts the training split
only, so validation and test stay real patients. A synthetic row fills the id, the class
column(s) and the split column; every other cell -- patient, lesion, age, site -- stays
empty, since a generated image belongs to no patient and inventing one would let it pass for
real. Under `accelerate launch` training and sampling use every process; only the main
process plans and writes the CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import hashlib
import io
import json
import shutil
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ddpm_lesion.balance.dedupe import find_duplicates
from ddpm_lesion.balance.plan import (
    BalancePlan,
    ClassPlan,
    ClassScheme,
    Duplicate,
    class_cells,
    class_scheme,
    count_classes,
    row_label,
    synthetic_counts,
    training_rows,
)
from ddpm_lesion.balance.split import find_group_column, groups_in_several_splits
from ddpm_lesion.core import wandb_review
from ddpm_lesion.core.config import (
    load_yaml,
    option,
    save_config,
    to_plain_dict,
)
from ddpm_lesion.core.distributed import run_on_main_process, same_on_every_process
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.fileio import remove_stale_temps, write_bytes_atomic, write_text_atomic
from ddpm_lesion.core.options import MixedPrecision, ReportTo
from ddpm_lesion.core.resume_guard import resume_differences
from ddpm_lesion.data.image_decoding import IMAGE_EXTENSIONS
from ddpm_lesion.data.label_writer import check_can_add_columns, write_labels
from ddpm_lesion.data.labels import SYNTHETIC_COLUMN, LabelTable, find_images, id_key, read_labels, resolve_ids
from ddpm_lesion.data.training_images import load_training_images
from ddpm_lesion.evaluate.copy_detection import DUPLICATE_DISTANCE
from ddpm_lesion.sample.generation import distributed_state, generate
from ddpm_lesion.sample.output_folder import OutputLayout
from ddpm_lesion.sample.provenance import read_manifest
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.train.loop import TrainConfig, train

SOURCE_COLUMN = "source_model"
ADDED_COLUMNS = [SYNTHETIC_COLUMN, SOURCE_COLUMN]
ROWS_ID, ROWS_CLASS = "image_id", "class"  # the columns of OUT/train_rows.csv


class BalanceMode(str, enum.Enum):
    CONDITIONAL = "conditional"
    PER_CLASS = "per_class"


@dataclasses.dataclass
class BalanceOptions:
    """The options of `balance` itself. `BalanceConfig` adds the pass-through options of
    `train_ddpm.py` and `sample_ddpm.py`."""

    train_data_dir: Path | None = option(None, "Folder of the real images (searched recursively).")
    labels_csv: Path | None = option(None, "Labels CSV (HAM10000, ISIC 2017-2020, or any CSV with a header); "
                                           "OUT/labels.csv has its layout.")
    id_column: str | None = option(None, "CSV column holding image ids (default: detected from the layout).")
    label_column: str | None = option(None, "Class column (e.g. dx), or comma-separated one-hot columns (e.g. "
                                            "MEL,NV,BCC). Default: the layout's (HAM10000 dx, ISIC 2020 target, "
                                            "ISIC 2018/2019 one-hot, ISIC 2017 melanoma/seborrheic_keratosis/nevus).")
    target: str = option("majority", "Training rows per class after balancing: majority (as many as the largest "
                                     "class), N, or CLASS=N,... (other classes get none).",
                         metavar="majority|N|CLASS=N,...")
    mode: BalanceMode = option(BalanceMode.CONDITIONAL, "conditional: one class-conditional model for all classes "
                                                        "(see --guidance_scale); per_class: one unconditional model "
                                                        "per class to top up.")
    split_column: str | None = option(None, "Column naming each row's split (e.g. from `ddpm-lesion split`): the "
                                            "plan counts, and synthetic rows join, the --train_value rows only.")
    train_value: str = option("train", "The --split_column value of the training split.")
    group_column: str | None = option(None, "With --split_column: the patient column that must not cross splits "
                                            "(default: patient_id, else lesion_id, if present).")
    dedupe: bool = option(False, "Leave near-duplicate real training images out of fine-tuning (they stay rows of "
                                 "the output CSV); listed in the plan.")
    dedupe_threshold: float = option(DUPLICATE_DISTANCE, "With --dedupe: the copy distance (as `ddpm-lesion "
                                                         "evaluate`'s) at or below which two images are one picture.")
    no_reject_copies: bool = option(False, "Keep generated images that are near copies of the class's training "
                                           "images (by default each is replaced by a fresh one, as sample_ddpm.py "
                                           "--reject_copies does; generated/<class>/rejected.csv lists them).")
    output_dir: Path | None = option(None, "Run folder: plan.json, model/, generated/, images/, labels.csv.")
    overwrite: bool = option(False, "Delete an earlier balance run's outputs in --output_dir and start over.")
    dry_run: bool = option(False, "Print the plan and stop.")


# The options of the other commands that balance sets itself, from its own options and the plan.
_SET_FOR_TRAINING = {"train_data_dir", "labels_csv", "label_filter", "id_column", "dataset_name",
                     "dataset_config_name", "image_column", "class_column", "output_dir", "resume_from_checkpoint",
                     "overwrite_output_dir", "dry_run"}
_SET_FOR_SAMPLING = {"model_dir", "checkpoint", "output_dir", "num_images", "class_label", "prefix", "shard",
                     "overwrite", "reject_copies", "no_reject_copies", "train_csv", "label_filter", "id_column"}
# What a resumed balance run may change (`ddpm_lesion.core.resume_guard`): how often to save or log, not
# what is made.
MAY_CHANGE_ON_RESUME = {"dry_run", "overwrite", "cache_dir", "report_to", "tracker_project_name", "logging_dir",
               "checkpointing_steps", "checkpoints_total_limit", "save_images_steps", "num_sample_images",
               "sample_inference_steps"}


def _pass_through(source: type, skip: set[str], script: str) -> list[tuple[str, Any, dataclasses.Field]]:
    """The fields of `source` not in `skip`, re-declared (same type, default and help, the
    help tagged with the script they come from) for `BalanceConfig`."""
    hints = typing.get_type_hints(source)
    return [(f.name, hints[f.name],
             dataclasses.field(default=f.default, default_factory=f.default_factory,
                               metadata={**f.metadata, "help": f"[{script}] {f.metadata['help']}"}))
            for f in dataclasses.fields(source) if f.name not in skip]


_TRAINING_OPTIONS = _pass_through(TrainConfig, _SET_FOR_TRAINING, "train_ddpm.py")
# --seed, --mixed_precision, --report_to and --tracker_project_name exist in both scripts: one flag
# (training's) sets both.
_SAMPLING_OPTIONS = _pass_through(SampleConfig, _SET_FOR_SAMPLING | {name for name, _, _ in _TRAINING_OPTIONS},
                                  "sample_ddpm.py")
BalanceConfig = dataclasses.make_dataclass("BalanceConfig", _TRAINING_OPTIONS + _SAMPLING_OPTIONS,
                                           bases=(BalanceOptions,))
BalanceConfig.__module__ = __name__  # make_dataclass says "types" (Python < 3.12); pickle needs the truth
BalanceConfig.__doc__ = ("Options of `ddpm-lesion balance`: `BalanceOptions`, then train_ddpm.py's and "
                         "sample_ddpm.py's options with the same names and defaults.")


# `BalanceConfig` is built when this module is imported, so type checkers cannot see its
# fields; the functions that take one say so with this name.
AnyBalanceConfig = Any


@dataclasses.dataclass(frozen=True)
class BalanceLayout:
    root: Path

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    @property
    def config(self) -> Path:
        return self.root / "balance_config.yaml"

    @property
    def train_rows(self) -> Path:
        return self.root / "train_rows.csv"

    @property
    def labels(self) -> Path:
        return self.root / "labels.csv"

    @property
    def images(self) -> Path:
        return self.root / "images"

    def model(self, plan_class: ClassPlan | None) -> Path:
        """The conditional model (None), or one class's unconditional model."""
        return self.root / "model" if plan_class is None else self.root / "model" / plan_class.slug

    def generated(self, plan_class: ClassPlan) -> OutputLayout:
        return OutputLayout(self.root / "generated" / plan_class.slug, f"synthetic_{plan_class.slug}")

    def outputs(self) -> list[Path]:
        """Everything a balance run writes, for --overwrite."""
        return [self.plan, self.config, self.train_rows, self.labels, self.images, self.root / "model",
                self.root / "generated"]


@dataclasses.dataclass(frozen=True)
class SyntheticImage:
    id: str
    class_name: str
    source_model: str


# ------------------------------------------------------------------------ the options of each stage


def training_config(cfg: AnyBalanceConfig, layout: BalanceLayout, plan_class: ClassPlan | None) -> TrainConfig:
    """The fine-tune of the conditional model (`plan_class` None: every row of train_rows.csv,
    conditioned on its class) or of one class's unconditional model (that class's rows)."""
    return TrainConfig(**{name: getattr(cfg, name) for name, _, _ in _TRAINING_OPTIONS},
                       train_data_dir=cfg.train_data_dir, labels_csv=layout.train_rows, id_column=ROWS_ID,
                       class_column=ROWS_CLASS if plan_class is None else None,
                       label_filter=[] if plan_class is None else [f"{ROWS_CLASS}={plan_class.name}"],
                       output_dir=layout.model(plan_class), resume_from_checkpoint="latest")


def sampling_config(cfg: AnyBalanceConfig, layout: BalanceLayout, plan_class: ClassPlan) -> SampleConfig:
    """The images of one class: from the conditional model with `--class_label`, or from the class's own model."""
    conditional = BalanceMode(cfg.mode) is BalanceMode.CONDITIONAL
    generated = layout.generated(plan_class)
    precision = cfg.mixed_precision.value if cfg.mixed_precision else "no"
    return SampleConfig(**{name: getattr(cfg, name) for name, _, _ in _SAMPLING_OPTIONS},
                        model_dir=str(layout.model(None if conditional else plan_class)),
                        output_dir=generated.root, prefix=generated.prefix, num_images=plan_class.synthetic,
                        class_label=plan_class.name if conditional else None,
                        seed=class_seed(cfg.seed, plan_class.name), mixed_precision=MixedPrecision(precision),
                        report_to=ReportTo.WANDB if cfg.report_to is ReportTo.WANDB else ReportTo.NONE,
                        tracker_project_name=cfg.tracker_project_name,
                        **_copy_check(cfg, layout, plan_class))


def _copy_check(cfg: AnyBalanceConfig, layout: BalanceLayout, plan_class: ClassPlan) -> dict[str, Any]:
    """The sampler's --reject_copies options: the class's own training rows (the images a
    class-conditional or per-class model most plausibly copies when asked for that class;
    checking every class would cost an index of the whole training set per class)."""
    if cfg.no_reject_copies:
        return {"no_reject_copies": True}
    return {"reject_copies": cfg.train_data_dir, "train_csv": layout.train_rows, "id_column": ROWS_ID,
            "label_filter": [f"{ROWS_CLASS}={plan_class.name}"]}


def class_seed(seed: int, class_name: str) -> int:
    """The sampling seed of one class. With one seed for all, image i of every class would
    start from the same noise, and a barely fine-tuned model turns the same noise into nearly
    the same picture whatever the label: near-identical images with different labels."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{class_name}".encode()).digest()[:4], "little")


# ------------------------------------------------------------------------ 1. plan


def validate(cfg: AnyBalanceConfig) -> None:
    for name in ("train_data_dir", "labels_csv", "output_dir"):
        if getattr(cfg, name) is None:
            raise UserError(f"--{name} is required.")
    if not cfg.dry_run and cfg.pretrained_model_name_or_path is None and cfg.model_config is None:
        raise UserError("--pretrained_model_name_or_path is required (a hub id in the HF cache such as "
                        "google/ddpm-ema-church-256, or a folder written by save_pretrained); --dry_run shows the "
                        "plan without one.")
    if Path(cfg.output_dir).resolve().is_relative_to(Path(cfg.train_data_dir).resolve()):
        raise UserError(f"--output_dir {cfg.output_dir} is inside --train_data_dir {cfg.train_data_dir}: the "
                        "synthetic images would be found as training images. Choose a folder outside it.")
    if BalanceMode(cfg.mode) is BalanceMode.PER_CLASS and cfg.guidance_scale != 1.0:
        raise UserError("--guidance_scale applies to --mode conditional; per-class models are unconditional.")
    if cfg.dedupe_threshold < 0:
        raise UserError(f"--dedupe_threshold must be >= 0, got {cfg.dedupe_threshold}.")


def make_plan(cfg: AnyBalanceConfig, table: LabelTable,
              labels_sha256: str) -> tuple[BalancePlan, ClassScheme, list[int], list[str]]:
    """The plan before deduplication, the class scheme, the training rows and their classes."""
    check_can_add_columns(table, ADDED_COLUMNS)
    rows = training_rows(table, cfg.split_column, cfg.train_value)
    scheme = class_scheme(table, cfg.label_column)
    labels = [row_label(table, scheme, r) for r in rows]
    real = count_classes(labels)
    made = synthetic_counts(real, cfg.target)
    plan = BalancePlan(
        labels_csv=str(table.path), labels_sha256=labels_sha256, layout=table.format.value,
        class_columns=scheme.described,
        training_split=f"{cfg.split_column}={cfg.train_value}" if cfg.split_column else "all rows",
        training_rows=len(rows), target=cfg.target, mode=BalanceMode(cfg.mode).value,
        dedupe_threshold=cfg.dedupe_threshold if cfg.dedupe else None,
        classes=[ClassPlan(name, real[name], made[name]) for name in real])
    return plan, scheme, rows, labels


def check_splits(cfg: AnyBalanceConfig, table: LabelTable) -> None:
    """Refuse a split where a patient's images sit in two splits: the balanced training set
    would then share patients with its test set."""
    group = find_group_column(table, cfg.group_column) if cfg.split_column else None
    crossing = groups_in_several_splits(table, group, cfg.split_column) if group else {}
    if crossing:
        shown = ", ".join(f"{g} ({'/'.join(s)})" for g, s in list(crossing.items())[:5])
        raise UserError(f"Labels CSV {table.path}: {len(crossing)} {group} value(s) occur in several "
                        f"{cfg.split_column} splits: {shown}. Re-split by patient with `ddpm-lesion split`, or name "
                        "the right patient column with --group_column.")


def check_ids(table: LabelTable, plan: BalancePlan, layout: BalanceLayout) -> None:
    """Refuse real ids that could be taken for synthetic ones (`synthetic_<class>_<index>`)."""
    prefixes = tuple(f"{layout.generated(c).prefix}_" for c in plan.to_generate)
    clash = [i for i in table.ids(list(range(len(table.rows)))) if id_key(i).startswith(prefixes)]
    if clash:
        raise UserError(f"Labels CSV {table.path} already has ids named like synthetic ones (e.g. {clash[0]}). Is it "
                        "an output of ddpm-lesion balance? Give the original labels file.")


def find_training_duplicates(cfg: AnyBalanceConfig, table: LabelTable, rows: list[int],
                             log: Callable[[str], None]) -> list[Duplicate]:
    """Near-duplicates among the training images, at the training resolution (decoded through
    training's own cached loader)."""
    filters = [(cfg.split_column, cfg.train_value)] if cfg.split_column else []
    loaded = load_training_images(Path(cfg.train_data_dir), Path(cfg.labels_csv), filters, cfg.id_column,
                                  cfg.resolution, cache_dir=cfg.cache_dir)
    folder = Path(cfg.train_data_dir)
    id_of = {path.relative_to(folder).as_posix(): image_id
             for image_id, path in resolve_ids(folder, table.ids(rows), find_images(folder)).found}
    log(f"--dedupe: comparing {len(loaded.names)} training images")
    pairs = find_duplicates(loaded.pixels.permute(0, 2, 3, 1).numpy(), cfg.dedupe_threshold)
    return [Duplicate(id_of[loaded.names[p.index]], id_of[loaded.names[p.kept]], p.distance) for p in pairs]


def prepare(cfg: AnyBalanceConfig, layout: BalanceLayout, log: Callable[[str], None]) -> BalancePlan:
    """Stage 1 (main process): the plan, reused from an earlier run when it is the same."""
    table = read_labels(Path(cfg.labels_csv), cfg.id_column)
    plan, _, rows, labels = make_plan(cfg, table, _sha256(table.path))
    check_splits(cfg, table)
    check_ids(table, plan, layout)
    if not cfg.dry_run:
        check_rerun(cfg, layout, log)
    saved = BalancePlan.from_dict(json.loads(layout.plan.read_text(encoding="utf-8"))) if (
        not cfg.dry_run and layout.plan.is_file()) else None
    if saved is not None:
        differences = saved.differences(plan)
        if differences:
            raise UserError(f"{layout.plan} was made from other inputs: {'; '.join(differences)}. Rerun with the "
                            "original labels CSV and options, pass --overwrite to start over, or choose another "
                            "--output_dir.")
        log(f"reusing the plan in {layout.plan}")
        plan = saved
    elif cfg.dedupe:
        plan.duplicates = find_training_duplicates(cfg, table, rows, log)
    if not cfg.dry_run:
        layout.root.mkdir(parents=True, exist_ok=True)
        save_config(cfg, layout.config)
        write_text_atomic(layout.plan, json.dumps(plan.to_dict(), indent=2) + "\n")
        left_out = {d.id for d in plan.duplicates}
        write_text_atomic(layout.train_rows, _csv_text([[ROWS_ID, ROWS_CLASS]] + [
            [image_id, label] for image_id, label in zip(table.ids(rows), labels) if image_id not in left_out]))
    return plan


def check_rerun(cfg: AnyBalanceConfig, layout: BalanceLayout, log: Callable[[str], None]) -> None:
    """Resume only a run made with the same settings; with --overwrite, clear it first."""
    if cfg.overwrite:
        for path in layout.outputs():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        log(f"--overwrite: deleted the earlier balance outputs in {layout.root}")
        return
    if not layout.config.is_file():
        return
    new = to_plain_dict(cfg)
    differences = resume_differences(load_yaml(layout.config), new, MAY_CHANGE_ON_RESUME)
    if differences:
        raise UserError(f"{layout.root} holds a balance run made with other settings ({layout.config}): "
                        + "; ".join(differences) + ". Rerun with the original values to resume it, pass --overwrite "
                        "to delete its outputs and start over, or choose another --output_dir.")


# ------------------------------------------------------------------------ 4. collect


def collect(cfg: AnyBalanceConfig, plan: BalancePlan, layout: BalanceLayout, log: Callable[[str], None]) -> Path:
    """Stage 4 (main process): copy the synthetic images under their ids and write labels.csv."""
    table = read_labels(Path(cfg.labels_csv), cfg.id_column)
    if _sha256(table.path) != plan.labels_sha256:
        raise UserError(f"{table.path} changed since the plan in {layout.plan} was made. Restore it, or start over "
                        "with --overwrite.")
    _, scheme, rows, labels = make_plan(cfg, table, plan.labels_sha256)
    remove_stale_temps(layout.images)
    # Ids keep the input's style: with an extension if every real id has one.
    with_extension = all(Path(i).suffix.lower() in IMAGE_EXTENSIONS for i in table.ids(list(range(len(table.rows)))))
    images: list[SyntheticImage] = []
    copied = 0
    for plan_class in plan.to_generate:
        for source, image_id, model_sha256 in generated_images(plan, layout, plan_class):
            copied += _copy_if_changed(source, layout.images / source.name)
            model = layout.model(None if plan.mode == BalanceMode.CONDITIONAL.value else plan_class)
            images.append(SyntheticImage(source.name if with_extension else image_id, plan_class.name,
                                         f"{model.relative_to(layout.root).as_posix()}@sha256:{model_sha256}"))
    write_labels(table, layout.labels, output_rows(table, scheme, rows, labels, cfg.split_column, images),
                 ADDED_COLUMNS)
    log(f"copied {copied} synthetic image(s) to {layout.images} ({len(images) - copied} were already there)\n"
        f"wrote {layout.labels}: the {len(table.rows)} input rows + {len(images)} synthetic rows")
    return layout.labels


def generated_images(plan: BalancePlan, layout: BalanceLayout, plan_class: ClassPlan) -> list[tuple[Path, str, str]]:
    """(file, id, model sha256) of each image of one class, checked against the sampler's manifest:
    all there, and each made for this class."""
    generated = layout.generated(plan_class)
    made = {int(row["index"]): row for row in read_manifest(generated.manifest)} if generated.manifest.is_file() else {}
    missing = [i for i in range(plan_class.synthetic) if i not in made]
    if missing:
        raise UserError(f"{generated.root} holds {plan_class.synthetic - len(missing)} of the {plan_class.synthetic} "
                        f"images of class {plan_class.name}: rerun the same command to finish them.")
    wanted = plan_class.name if plan.mode == BalanceMode.CONDITIONAL.value else ""  # per-class models: unconditional
    wrong = [i for i in range(plan_class.synthetic) if made[i]["class_label"] != wanted]
    if wrong:
        raise UserError(f"{generated.root}: image {wrong[0]} was generated for class "
                        f"{made[wrong[0]]['class_label'] or '(none)'}, not {wanted or '(none)'}. Start over with "
                        "--overwrite.")
    return [(generated.image_path(i), generated.image_path(i).stem, made[i]["model_sha256"])
            for i in range(plan_class.synthetic)]


def output_rows(table: LabelTable, scheme: ClassScheme, rows: list[int], labels: list[str], split_column: str | None,
                images: list[SyntheticImage]) -> Iterator[dict[str, str]]:
    """Every input row (synthetic=0), then one row per synthetic image (synthetic=1): its id,
    its class cells in the input's spelling, the training split's value, nothing else."""
    for row in table.rows:
        yield {**row, SYNTHETIC_COLUMN: "0", SOURCE_COLUMN: ""}
    train_value = Counter(table.rows[r][split_column] for r in rows).most_common(1)[0][0] if split_column else None
    cells = {name: class_cells(table, scheme, rows, labels, name) for name in {image.class_name for image in images}}
    for image in images:
        row = dict.fromkeys(table.columns, "") | cells[image.class_name] | {table.id_column: image.id}
        if split_column:
            row[split_column] = train_value
        yield row | {SYNTHETIC_COLUMN: "1", SOURCE_COLUMN: image.source_model}


# ------------------------------------------------------------------------ the command


def balance(cfg: AnyBalanceConfig) -> BalancePlan:
    """Run (or resume) every stage; returns the plan. Every process returns."""
    with same_on_every_process():
        validate(cfg)
    layout = BalanceLayout(Path(cfg.output_dir))
    state = distributed_state()
    plan = run_on_main_process(state, lambda: prepare(cfg, layout, state.print))
    state.print(plan.to_text())
    if cfg.dry_run:
        state.print("--dry_run: nothing trained, generated or written.")
        return plan
    for model_class in models_to_train(plan):
        train(training_config(cfg, layout, model_class))
    state.wait_for_everyone()  # the main process publishes the final pipelines after the others return
    for plan_class in plan.to_generate:
        generate(sampling_config(cfg, layout, plan_class))
    run_on_main_process(state, lambda: collect(cfg, plan, layout, state.print))
    if cfg.report_to is ReportTo.WANDB and state.is_main_process:
        log_to_wandb(cfg, plan, layout)
    return plan


def log_to_wandb(cfg: AnyBalanceConfig, plan: BalancePlan, layout: BalanceLayout) -> None:
    """A `balance` run, grouped under the output folder's name (the group `utility` joins
    when it judges this labels.csv): the plan per class, and the generated sets it used."""
    rows = [[c.name, c.real, c.synthetic] for c in plan.classes]
    wandb_review.log_command_run(
        wandb_review.JobType.BALANCE, cfg.tracker_project_name, layout.root.resolve().name, to_plain_dict(cfg),
        sample_sets=tuple(layout.generated(c).root for c in plan.to_generate),
        scalars={"real_rows": sum(c.real for c in plan.classes), "synthetic_rows": sum(c.synthetic for c in plan.classes)},
        tables={"plan/table": (["class", "real", "synthetic"], rows)})


def models_to_train(plan: BalancePlan) -> list[ClassPlan | None]:
    """None for the one conditional model, or each class to top up for per-class models;
    no model at all when every class already meets the target."""
    if not plan.to_generate:
        return []
    return [None] if plan.mode == BalanceMode.CONDITIONAL.value else list(plan.to_generate)


# ------------------------------------------------------------------------ small helpers


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _copy_if_changed(source: Path, target: Path) -> bool:
    """Copy atomically unless `target` already holds the same bytes; True if it copied."""
    data = source.read_bytes()
    if target.is_file() and target.read_bytes() == data:
        return False
    write_bytes_atomic(target, data)
    return True
