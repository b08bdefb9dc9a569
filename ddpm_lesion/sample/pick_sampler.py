"""`ddpm-lesion pick-sampler`: the fewest network calls that give this model's DDPM-50 quality.

How few sampling steps a model tolerates depends on how accurate its network is, so it is
measured per model rather than assumed. Given the exact denoiser, DPM-Solver++ with 20
steps reproduces the data distribution better than DDPM with 50 (tests/test_sampling.py);
on the briefly trained demo models every deterministic solver had 4-7x DDPM-50's KID
(BENCHMARKS.md). So the fast samplers are used only where they have been shown to work:
this command generates the same image indices (the same initial noise) with the reference
(DDPM, 50 steps: the origin's sampler and `sample_ddpm.py`'s default) and with candidates
in order of cost, scores every set against held-out real images on the same KID subsets,
and stops at the cheapest step count whose KID is within `--tolerance` of the reference's.
Cheaper than measuring everything: the real images' features are cached; each candidate
first makes only `--screen_images` images and stops there when it is clearly worse than the
reference (`clearly_worse`); and a family (scheduler) clearly worse at two step counts, and
no better at the second, is not tried at more. The choice goes to `sampler.json` in the
model folder, with the model's fingerprint and the evidence, and `sample_ddpm.py` uses it
whenever `--scheduler`/`--num_inference_steps` are left automatic (and ignores it, saying
so, once the weights change). Training with `--validation_data_dir` runs this at its end.

Generation goes through `generation.generate`, so each setting's images are an ordinary,
resumable `sample_ddpm.py` folder under `--output_dir` (with preview grids to look at).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ddpm_lesion.core import run_files
from ddpm_lesion.core.config import option, save_config, to_plain_dict
from ddpm_lesion.core.errors import UserError
from ddpm_lesion.core.figures import figure_png, pyplot
from ddpm_lesion.core.fileio import write_bytes_atomic, write_text_atomic
from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.core.version import __version__
from ddpm_lesion.data.evaluation_sets import load_image_set
from ddpm_lesion.evaluate import metrics
from ddpm_lesion.evaluate.features import Extractor, FeatureSpace, cached_features, resolve_extractors
from ddpm_lesion.model.pretrained import load_pipeline, model_sha256, resolve_pipeline_dir
from ddpm_lesion.sample.generation import generate
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.sample.sampler_records import read_distilled
from ddpm_lesion.sample.samplers import DEFAULT_SCHEDULER, DEFAULT_STEPS, SchedulerName

REFERENCE = f"{DEFAULT_SCHEDULER.value}:{DEFAULT_STEPS}"


class Setting(NamedTuple):
    """A sampler and its step count (= network calls per image), written `SCHEDULER:STEPS`."""

    scheduler: SchedulerName
    steps: int

    @classmethod
    def parse(cls, text: str) -> Setting:
        name, _, steps = text.partition(":")
        names = ", ".join(s.value for s in SchedulerName)
        if name not in {s.value for s in SchedulerName} or not steps.isdigit() or int(steps) < 1:
            raise UserError(f"sampler setting {text!r}: write SCHEDULER:STEPS with SCHEDULER one of {names} and "
                            f"STEPS a positive integer, e.g. dpmsolver++:20.")
        return cls(SchedulerName(name), int(steps))

    @property
    def spec(self) -> str:
        return f"{self.scheduler.value}:{self.steps}"


@dataclasses.dataclass
class PickSamplerConfig:
    """Options of `ddpm-lesion pick-sampler`."""

    model_dir: str | None = option(None, "The model: a training run folder or a DDPMPipeline folder (sampler.json is "
                                         "written into it).")
    checkpoint: str | None = option(None, "Measure a run's checkpoint instead of its final pipeline: 'latest', "
                                          "'best' or a step number.", metavar="latest|best|STEP")
    real_dir: Path | None = option(None, "Held-out real images of the class the model generates (never its training "
                                         "images: a sampler that copies them better would win).")
    real_csv: Path | None = option(None, "Labels CSV selecting the real images (with --label_filter).", metavar="CSV")
    label_filter: list[str] = option([], "COLUMN=VALUE row filter for --real_csv; repeat to combine.",
                                     metavar="COL=VAL")
    id_column: str | None = option(None, "Id column of --real_csv, if not the layout's default.")
    output_dir: Path | None = option(None, "Where each setting's images, the report and the plot go (default: "
                                           "MODEL/sampler_choice). Rerunning resumes.")
    candidates: list[str] = option(
        [f"{name}:{steps}" for steps in (10, 15, 20) for name in
         ("dpmsolver++", "unipc", "sde-dpmsolver++", "dpmsolver++-trailing", "unipc-trailing",
          "sde-dpmsolver++-trailing", "unipc-linspace", "ddim-eta0.5", "ddim-eta0.7", "ddim-eta1")]
        + ["ddpm:25", "sde-dpmsolver++:25", "sde-dpmsolver++-trailing:25", "ddpm:30", "sde-dpmsolver++:30",
           "sde-dpmsolver++-trailing:30", "ddpm:40", "sde-dpmsolver++:40"],
        "Settings to try, cheapest (fewest steps) first; repeat the flag for several, e.g. --candidates ddim:16 "
        "--candidates ddim:20.", metavar="SCHEDULER:STEPS")
    reference: str = option(REFERENCE, "The setting whose quality is the bar: sample_ddpm.py's default, the origin's "
                                       "sampler.", metavar="SCHEDULER:STEPS")
    tolerance: float = option(0.1, "Accept a candidate whose KID is at most this fraction above the reference's "
                                   "(mean of the paired subset differences); 0 = no worse at all.")
    num_images: int = option(500, "Images per setting (the same indices, so the same noise, for every setting).")
    screen_images: int = option(100, "First screen: each candidate makes its first this many images, and one "
                                     "clearly worse than the reference on them (the optimistic end of the paired "
                                     "interval outside --tolerance) stops there; the others make all --num_images.")
    features: FeatureSpace = option(FeatureSpace.AUTO, "Feature space of the KID: auto = FID Inception-v3 if its "
                                                       "weights are found offline, else EfficientNet-Lite0.",
                                    choices=[FeatureSpace.AUTO.value, FeatureSpace.INCEPTION.value,
                                             FeatureSpace.EFFICIENTNET.value, FeatureSpace.PIXELS.value])
    inception_weights: Path | None = option(None, "FID Inception-v3 weights (pt_inception-2015-12-05-*.pth).",
                                            metavar="PATH")
    resolution: int | None = option(None, "Images are compared at this size (default: the model's own).")
    kid_subsets: int = option(100, "Random subsets for KID and the paired differences.")
    kid_subset_size: int = option(100, "Images per KID subset (capped at the smaller set).")
    class_label: str | None = option(None, "For a class-conditional model: the class to measure on, the class of the "
                                           "--real_dir images. The choice is recorded for the model as a whole.")
    guidance_scale: float = option(1.0, "Classifier-free guidance of a class-conditional model, as you will sample "
                                        "with it (guidance changes how many steps are needed).")
    mixed_precision: MixedPrecision = option(MixedPrecision.AUTO, "As for sample_ddpm.py: measure at the precision "
                                                                  "you will generate with.",
                                             choices=[p.value for p in MixedPrecision])
    batch_size: int | None = option(None, "Images per network call while generating (default: automatic).")
    seed: int = option(0, "Seed of the images and of the KID subsets.")

    def __post_init__(self) -> None:
        self.features, self.mixed_precision = FeatureSpace(self.features), MixedPrecision(self.mixed_precision)


class Scored(NamedTuple):
    """One setting's result: its KID against the real set and, for a candidate, the paired
    difference with the reference (None for the reference itself)."""

    setting: Setting
    kid: metrics.KidEstimate
    difference: metrics.PairedDifference | None


def within_tolerance(candidate: Scored, reference: Scored, tolerance: float) -> bool:
    """Is `candidate` as good as `reference`, up to `tolerance`? Judged on the mean paired
    difference, the least noisy estimate of how much worse it is. A reference KID at or
    below zero (indistinguishable from the real images) leaves no room: then only a
    candidate that is no worse at all passes."""
    return candidate.difference.mean <= tolerance * max(reference.kid.mean, 0.0)


def clearly_worse(candidate: Scored, reference: Scored, tolerance: float) -> bool:
    """Worse beyond `tolerance` even at the optimistic (2.5%) end of the paired differences:
    more images would not bring it within tolerance, so making them is wasted time."""
    return candidate.difference.low > tolerance * max(reference.kid.mean, 0.0)


def choose(reference: Scored, candidates: list[Scored], tolerance: float) -> Scored:
    """The cheapest candidate within tolerance (among equally cheap ones the lowest KID),
    or the reference when none is."""
    passing = [c for c in candidates if within_tolerance(c, reference, tolerance)]
    if not passing:
        return reference
    return min(passing, key=lambda c: (c.setting.steps, c.kid.mean))


def pick_sampler(cfg: PickSamplerConfig) -> dict:
    """Measure, choose, write `sampler.json` and the report; returns the record written."""
    pipeline_dir, reference, candidates = _check(cfg)
    pipeline, _ = load_pipeline(pipeline_dir)
    sha256 = model_sha256(pipeline.unet)
    resolution = cfg.resolution or pipeline.unet.config.sample_size
    out = cfg.output_dir or Path(pipeline_dir) / "sampler_choice"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / run_files.PICK_SAMPLER_CONFIG)

    extractor = _extractor(cfg)
    real = load_image_set("real_dir", cfg.real_dir, resolution, cfg.real_csv, cfg.label_filter, cfg.id_column)
    if len(real.pixels) < 2:
        raise UserError(f"--real_dir {cfg.real_dir}: KID needs at least 2 real images, found {len(real.pixels)}.")
    print(f"ddpm-lesion pick-sampler: {pipeline_dir}, {len(real.pixels)} real images, {cfg.num_images} images per "
          f"setting, KID in {extractor.key} at {resolution} px, tolerance {cfg.tolerance:.0%}", flush=True)
    real_features = _real_features(extractor, real.pixels, out)

    def score(setting: Setting, num_images: int, against: np.ndarray | None) -> tuple[Scored, np.ndarray]:
        features = _setting_features(cfg, pipeline_dir, setting, out, extractor, resolution, num_images)
        kid = metrics.kid(real_features, features, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
        difference = None if against is None else metrics.paired_kid_difference(
            real_features, features, against[:num_images], cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
        return Scored(setting, kid, difference), features

    started = time.perf_counter()
    reference_scored, reference_features = score(reference, cfg.num_images, None)
    screen = min(cfg.screen_images, cfg.num_images)
    scored: list[Scored] = []
    screened_out: list[Scored] = []
    dropped: dict[SchedulerName, str] = {}
    worse_kid: dict[SchedulerName, float] = {}  # KID of each family's last clearly worse candidate
    for steps in sorted({c.steps for c in candidates}):
        for setting in (c for c in candidates if c.steps == steps):
            if setting.scheduler in dropped:
                continue
            result = score(setting, screen, reference_features)[0] if screen < cfg.num_images else None
            if result is not None and clearly_worse(result, reference_scored, cfg.tolerance):
                screened_out.append(result)
                print(_line(result, reference_scored, cfg.tolerance) + f" (first screen, {screen} images)", flush=True)
            else:
                result = score(setting, cfg.num_images, reference_features)[0]
                scored.append(result)
                print(_line(result, reference_scored, cfg.tolerance), flush=True)
            if clearly_worse(result, reference_scored, cfg.tolerance):
                # A family clearly worse at two step counts, and no better at the second, is
                # flat in the step count (as the deterministic solvers were on PH², issue 17):
                # its costlier settings are not tried.
                if setting.scheduler in worse_kid and result.kid.mean >= worse_kid[setting.scheduler]:
                    dropped[setting.scheduler] = (f"clearly worse at {setting.steps} steps and no better than at "
                                                  "fewer; costlier settings not tried")
                    print(f"{setting.scheduler.value}: {dropped[setting.scheduler]}", flush=True)
                worse_kid[setting.scheduler] = result.kid.mean
        if any(within_tolerance(s, reference_scored, cfg.tolerance) for s in scored):
            break  # the cheapest step count that passes wins; costlier candidates cannot
    chosen = choose(reference_scored, scored, cfg.tolerance)
    record = _record(cfg, pipeline_dir, sha256, extractor, len(real.pixels), out, reference_scored, scored, chosen)
    record["screened_out"] = [{**_as_dict(s), "num_images": screen} for s in screened_out]
    record["families_dropped"] = {name.value: why for name, why in dropped.items()}
    record["seconds"] = time.perf_counter() - started
    write_text_atomic(Path(pipeline_dir) / run_files.PICKED_SAMPLER, json.dumps(record, indent=2) + "\n")
    write_text_atomic(out / "report.md", _report(record))
    write_bytes_atomic(out / "kid_vs_steps.png", _plot(reference_scored, scored, chosen, cfg.tolerance, extractor))
    return record


def _check(cfg: PickSamplerConfig) -> tuple[str, Setting, list[Setting]]:
    """Fail on bad options before any image is made."""
    if not cfg.model_dir:
        raise UserError("--model_dir is required: the training run or pipeline folder to pick a sampler for.")
    if cfg.real_dir is None:
        raise UserError("--real_dir is required: held-out real images to compare each sampler's images with.")
    if cfg.tolerance < 0:
        raise UserError(f"--tolerance {cfg.tolerance}: give a fraction >= 0, e.g. 0.1 for within 10%.")
    if cfg.num_images < 2:
        raise UserError(f"--num_images {cfg.num_images}: KID needs at least 2 images per setting (500 is usual).")
    pipeline_dir = resolve_pipeline_dir(cfg.model_dir, cfg.checkpoint)
    if not Path(pipeline_dir).is_dir():
        raise UserError(f"--model_dir {cfg.model_dir} is not a local folder, and {run_files.PICKED_SAMPLER} must be written "
                        "next to the model. Fix: save the pipeline to a folder first (DDPMPipeline.from_pretrained("
                        "...).save_pretrained(FOLDER)) and pass that folder.")
    if read_distilled(pipeline_dir) is not None:
        raise UserError(f"{pipeline_dir} is a distilled model: it is sampled with the sampler it was distilled for "
                        "(its distilled.json). Compare it with its teacher with bench/samplers.py instead.")
    reference = Setting.parse(cfg.reference)
    candidates = list(dict.fromkeys(s for s in map(Setting.parse, cfg.candidates) if s != reference))
    if not candidates:
        raise UserError("--candidates: give at least one setting other than the --reference, e.g. dpmsolver++:20.")
    return pipeline_dir, reference, candidates


def _extractor(cfg: PickSamplerConfig) -> Extractor:
    extractors, warnings = resolve_extractors([cfg.features], cfg.inception_weights)
    for warning in warnings:
        print(f"warning: {warning}", flush=True)
    return extractors[0]  # auto also adds the pixel baseline; the choice is made in the first space


def _real_features(extractor: Extractor, pixels: np.ndarray, out: Path) -> np.ndarray:
    """The real images' features, cached in `out/features` under a hash of their pixels (so a
    changed real set is embedded again, an unchanged one only read)."""
    digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]
    stem = out / "features" / f"real-{len(pixels)}img-{pixels.shape[1]}px-{digest}"
    return cached_features([extractor], lambda: pixels, stem)[extractor.key]


def _setting_features(cfg: PickSamplerConfig, pipeline_dir: str, setting: Setting, out: Path, extractor: Extractor,
                      resolution: int, num_images: int) -> np.ndarray:
    """Generate (or resume) one setting's first `num_images` images and return their features,
    cached in `out/features`. A first screen's folder grows to the full set if it passes."""
    folder = out / f"{setting.scheduler.value}-{setting.steps}"
    generate(SampleConfig(model_dir=pipeline_dir, output_dir=folder, num_images=num_images,
                          scheduler=setting.scheduler, num_inference_steps=setting.steps,
                          mixed_precision=cfg.mixed_precision, batch_size=cfg.batch_size, seed=cfg.seed,
                          class_label=cfg.class_label, guidance_scale=cfg.guidance_scale))
    stem = out / "features" / f"{folder.name}-{num_images}img-{resolution}px"
    return cached_features([extractor], lambda: load_image_set("synthetic", folder / run_files.SAMPLE_IMAGES_DIR, resolution).pixels,
                           stem)[extractor.key]


def _line(candidate: Scored, reference: Scored, tolerance: float) -> str:
    verdict = "within tolerance" if within_tolerance(candidate, reference, tolerance) else "worse"
    return (f"{candidate.setting.spec:>20}: KID {candidate.kid.mean:.5f}, {candidate.difference.mean:+.5f} vs "
            f"{reference.setting.spec} ({reference.kid.mean:.5f}): {verdict}")


def _as_dict(scored: Scored) -> dict:
    entry = {"setting": scored.setting.spec, "network_calls_per_image": scored.setting.steps,
             "kid": scored.kid._asdict()}
    if scored.difference is not None:
        entry["paired_difference"] = scored.difference._asdict()
    return entry


def _record(cfg: PickSamplerConfig, pipeline_dir: str, sha256: str, extractor: Extractor, num_real: int, out: Path,
            reference: Scored, scored: list[Scored], chosen: Scored) -> dict:
    return {
        "scheduler": chosen.setting.scheduler.value,
        "num_inference_steps": chosen.setting.steps,
        "model_sha256": sha256,
        "chosen_by": f"ddpm-lesion pick-sampler {__version__}",
        "speed_up_vs_reference": reference.setting.steps / chosen.setting.steps,
        "rule": f"cheapest candidate whose mean paired KID difference is <= {cfg.tolerance:g} x the reference's KID",
        "model": pipeline_dir,
        "real": {"dir": str(cfg.real_dir), "csv": None if cfg.real_csv is None else str(cfg.real_csv),
                 "label_filter": cfg.label_filter, "images": num_real},
        "feature_space": extractor.key,
        "num_images": cfg.num_images,
        "config": to_plain_dict(cfg),
        "reference": _as_dict(reference),
        "candidates": [_as_dict(s) for s in scored],
        "report": str(out / "report.md"),
    }


def _report(record: dict) -> str:
    rows = [record["reference"], *record["candidates"],
            *({**row, "setting": f"{row['setting']} (first screen: {row['num_images']} images)"}
              for row in record.get("screened_out", []))]
    lines = [f"# Sampler choice for {record['model']}", "",
             f"Chosen: **{record['scheduler']}, {record['num_inference_steps']} steps** "
             f"({record['speed_up_vs_reference']:.2f}x fewer network calls than {record['reference']['setting']}).",
             f"Rule: {record['rule']}. KID in {record['feature_space']} against {record['real']['images']} real "
             f"images from {record['real']['dir']}; {record['num_images']} synthetic images per setting, the same "
             "indices (initial noise) for all.", "",
             "| setting | network calls | KID ×1e3 [2.5–97.5%] | Δ vs reference ×1e3 [2.5–97.5%] | P(lower) |",
             "|---|---|---|---|---|"]
    for row in rows:
        kid, delta = row["kid"], row.get("paired_difference")
        lines.append(f"| {row['setting']} | {row['network_calls_per_image']} | {1e3 * kid['mean']:.2f} "
                     f"[{1e3 * kid['ci_low']:.2f}, {1e3 * kid['ci_high']:.2f}] | "
                     + ("reference | — |" if delta is None else
                        f"{1e3 * delta['mean']:+.2f} [{1e3 * delta['low']:+.2f}, {1e3 * delta['high']:+.2f}] | "
                        f"{delta['candidate_lower']:.2f} |"))
    lines += [f"- {name}: {why}" for name, why in record.get("families_dropped", {}).items()]
    lines += ["", "Each setting's images and preview grids are in the folder of the same name beside this report."]
    return "\n".join(lines) + "\n"


def _plot(reference: Scored, scored: list[Scored], chosen: Scored, tolerance: float, extractor: Extractor) -> bytes:
    """KID against network calls per image, one series per scheduler, with the tolerance band."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4))
    bar = reference.kid.mean
    axes.axhspan(min(bar, 0.0), bar + tolerance * max(bar, 0.0), color="tab:green", alpha=0.15,
                 label=f"within {tolerance:.0%} of {reference.setting.spec}")
    for name in dict.fromkeys(s.setting.scheduler for s in [reference, *scored]):
        points = sorted((s for s in [reference, *scored] if s.setting.scheduler is name), key=lambda s: s.setting.steps)
        axes.errorbar([s.setting.steps for s in points], [s.kid.mean for s in points],
                      yerr=[[s.kid.mean - s.kid.ci_low for s in points], [s.kid.ci_high - s.kid.mean for s in points]],
                      marker="o", capsize=3, label=name.value)
    axes.scatter([chosen.setting.steps], [chosen.kid.mean], s=250, facecolors="none", edgecolors="black",
                 label=f"chosen: {chosen.setting.spec}", zorder=5)
    axes.set_xlabel("network calls per image (steps)")
    axes.set_ylabel(f"KID ({extractor.key})")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)
