"""The run folder's model card (`README.md`), as diffusers writes one for a Hub model.

A fine-tuned model travels without its training log: the card is what tells the next reader
which checkpoint it started from (pinned to a snapshot commit or the weights' sha256), on
which images, for how long, how to sample it, how good it measured, and that it is for
research only. It is rebuilt from the files the run folder already holds, so it is always
consistent with them and can be refreshed at any time (end of training, after each scored
checkpoint).

`base_model.json` is the one record written for the card: the starting point as found when
the run began (a resumed run keeps its first record, since a cache may since hold a newer
snapshot).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml
from diffusers import DDPMScheduler, UNet2DModel

from ddpm_lesion.core import run_files
from ddpm_lesion.core.fileio import write_text_atomic
from ddpm_lesion.model.conditioning import load_class_names
from ddpm_lesion.model.pretrained import read_best
from ddpm_lesion.model.source import file_sha256, is_hub_id, locate
from ddpm_lesion.model.unet_presets import FROM_SCRATCH_WARNING, parameter_count

RESEARCH_NOTICE = ("**Research use only.** Synthetic medical images must never be used for clinical diagnosis or "
                   "treatment decisions, and must never be passed off as real patient images.")
# Licences of the checkpoints the README recommends (their Hub model cards); anything else: "other".
KNOWN_LICENCES = {f"google/ddpm-{name}": "apache-2.0" for name in
                  ("cifar10-32", "ema-cifar10-32", "celebahq-256", "ema-celebahq-256", "church-256",
                   "ema-church-256", "bedroom-256", "ema-bedroom-256", "cat-256", "ema-cat-256")}


def record_base_model(run: Path, pretrained: str | None, revision: str | None, model_config: str | None,
                      unet: UNet2DModel, scheduler: DDPMScheduler) -> dict[str, Any]:
    """Write (once per run) and return what the run started from."""
    path = run / run_files.BASE_MODEL
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    schedule = {k: scheduler.config.get(k) for k in ("num_train_timesteps", "beta_schedule", "beta_start",
                                                     "beta_end", "variance_type", "prediction_type", "clip_sample")}
    record: dict[str, Any] = {"from_scratch": pretrained is None, "parameters": parameter_count(unet),
                              "noise_schedule": schedule}
    if pretrained is None:
        record["model_config"] = model_config
    else:
        source = locate(pretrained, revision)
        native = json.loads((source.unet_folder / "config.json").read_text(encoding="utf-8")).get("sample_size")
        weights = source.weights
        record.update(base_model=pretrained, hub=is_hub_id(pretrained), revision=source.revision,
                      native_resolution=native, weights_file=weights.name if weights else None,
                      weights_sha256=file_sha256(weights) if weights else None,
                      licence=KNOWN_LICENCES.get(pretrained, "other"))
    write_text_atomic(path, json.dumps(record, indent=2))
    return record


def write_model_card(run: Path) -> Path:
    """Rebuild `RUN/README.md` from the run folder's records."""
    run = Path(run)
    card = render_model_card(run)
    write_text_atomic(run / run_files.MODEL_CARD, card)
    return run / run_files.MODEL_CARD


def render_model_card(run: Path) -> str:
    cfg = _read_yaml(run / "train_config.yaml")
    base = _read_json(run / run_files.BASE_MODEL) or {}
    report = _read_json(run / run_files.DATA_REPORT_JSON)
    metrics = _read_csv(run / "metrics.csv")
    scratch = bool(base.get("from_scratch"))
    classes = load_class_names(run)

    tags = ["ddpm-lesion", "diffusers", "unconditional-image-generation", "medical-imaging", "synthetic-data"]
    front = {"license": base.get("licence", "other") if not scratch else "other", "library_name": "diffusers",
             "pipeline_tag": "unconditional-image-generation", "tags": tags + (["from-scratch"] if scratch else [])}
    if base.get("hub"):
        front["base_model"] = base["base_model"]
    out = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {run.name}", "",
           f"> {RESEARCH_NOTICE}", ""]

    if scratch:
        out += [f"A `DDPMPipeline` **{FROM_SCRATCH_WARNING}**", "",
                f"Architecture: `{base.get('model_config')}`, {base.get('parameters', 0) / 1e6:.1f} M parameters.", ""]
    elif base:
        pinned = (f"revision `{base['revision']}`" if base.get("revision") else "a local folder")
        out += [f"A `DDPMPipeline` fine-tuned with ddpm-lesion from **{base.get('base_model')}** ({pinned}).", "",
                "| base checkpoint | |", "|---|---|",
                f"| model | {base.get('base_model')} |",
                f"| revision | {base.get('revision') or '— (local folder)'} |",
                f"| weights | `{base.get('weights_file')}`, sha256 `{base.get('weights_sha256')}` |",
                f"| licence | {base.get('licence')} |",
                f"| parameters | {base.get('parameters', 0) / 1e6:.1f} M |",
                f"| native resolution | {base.get('native_resolution')} px; fine-tuned at {cfg.get('resolution')} px |",
                ""]
    schedule = base.get("noise_schedule") or {}
    if schedule:
        out += ["Noise schedule (kept from the start): " + ", ".join(f"{k} {v}" for k, v in schedule.items()), ""]

    out += ["## Training data", ""]
    if report:
        out += [f"- source: `{report.get('source')}`",
                f"- {report.get('rows')} rows, {report.get('found')} found, **{report.get('used')} images used**",
                f"- left out: {len(report.get('missing', []))} missing, {len(report.get('corrupt', []))} unreadable, "
                f"{len(report.get('rejected', []))} rejected, {len(report.get('ambiguous', []))} ambiguous, "
                f"{len(report.get('duplicates', []))} duplicate ids; {len(report.get('upscaled', []))} upscaled"]
        out += [f"- {note}" for note in report.get("notes", [])]
    for key in ("train_data_dir", "labels_csv", "dataset_name"):
        if cfg.get(key):
            out.append(f"- `--{key} {cfg[key]}`")
    if cfg.get("label_filter"):
        out.append("- filters: " + ", ".join(f"`{f}`" for f in cfg["label_filter"]))
    if classes:
        out.append(f"- class-conditional on `{cfg.get('class_column')}`: {', '.join(map(str, classes))}")
    out += ["- full report: [data_report.txt](data_report.txt)", ""]

    out += ["## Training", ""]
    last = metrics[-1] if metrics else {}
    if last:
        out.append(f"- {last.get('step')} optimizer steps (epoch {last.get('epoch')}), final loss {last.get('loss')}, "
                   f"{last.get('skipped_steps')} skipped non-finite steps")
    keys = ("resolution", "train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
            "lr_warmup_steps", "use_ema", "mixed_precision", "gradient_checkpointing", "seed", "max_train_steps")
    out.append("- settings: " + ", ".join(f"`{k}={cfg.get(k)}`" for k in keys if k in cfg))
    out += ["- all options: [train_config.yaml](train_config.yaml)", ""]

    out += ["## Sampling", "", _sampler_text(run, cfg), "", "```bash",
            f"python sample_ddpm.py --model_dir {run} --num_images 1000 --output_dir out/{run.name} --seed 0",
            "```", "", "```python", "from diffusers import DDPMPipeline",
            f"pipeline = DDPMPipeline.from_pretrained({str(run)!r})", "```", ""]

    out += ["## Evaluation", ""] + _evaluation_lines(run) + [""]
    out += ["## Figures", ""] + _figure_lines(run) + [""]
    return "\n".join(out)


def _sampler_text(run: Path, cfg: dict) -> str:
    picked = _read_json(run / run_files.PICKED_SAMPLER)
    if picked:
        return (f"Sample with **{picked.get('scheduler')}, {picked.get('num_inference_steps')} steps**: "
                f"`ddpm-lesion pick-sampler` measured it as good as DDPM-50 on these weights ({run_files.PICKED_SAMPLER}); "
                "`sample_ddpm.py` uses it by default.")
    return (f"Sample with `sample_ddpm.py`'s default, DDPM with 50 steps (the sample grids and checkpoint scores used "
            f"{cfg.get('sample_scheduler', 'ddpm')}, {cfg.get('sample_inference_steps', 50)} steps). "
            "`ddpm-lesion pick-sampler` can measure whether fewer steps are as good on this model.")


def _evaluation_lines(run: Path) -> list[str]:
    scores = _read_csv(run / run_files.VALIDATION_CSV)
    best = read_best(run)
    if not scores:
        return ["Not measured during training (no `--validation_data_dir`). Audit generated images with "
                "`ddpm-lesion evaluate --real HELDOUT --synthetic OUT --train TRAIN`, including the near-copy "
                "check against the training images."]
    lines = [f"KID of fixed-seed samples against held-out real images at {len(scores)} checkpoint(s) "
             f"([validation.csv](validation.csv), feature space {scores[-1].get('feature_space')}):", "",
             "| step | KID | 95% interval |", "|---|---|---|"]
    lines += [f"| {r['step']} | {r['kid']} | [{r['ci_low']}, {r['ci_high']}] |" for r in scores[-10:]]
    if best:
        lines += ["", f"Best: step {best['step']}, KID {best['kid']:.4g} ([{run_files.BEST_CHECKPOINT}]({run_files.BEST_CHECKPOINT}); sample it "
                      "with `--checkpoint best`)."]
    return lines


def _figure_lines(run: Path) -> list[str]:
    lines = []
    grids = sorted((run / run_files.SAMPLES_DIR).glob("step-*.png"))
    if grids:
        lines.append(f"![samples at the last step](samples/{grids[-1].name})")
        lines.append("Sample grids by step: " + ", ".join(f"[{g.stem}](samples/{g.name})" for g in grids[-5:]))
    for name, title in (("loss.png", "loss curve"),):
        if (run / name).is_file():
            lines.append(f"![{title}]({name})")
    lines += [f"![validation]({p.name})" for p in sorted(run.glob("validation*.png"))]
    return lines or ["None yet."]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _read_yaml(path: Path) -> dict:
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
