"""Which sampler, how many steps: KID of each against the origin's DDPM at 50 steps.

Generates the same image indices (so the same initial noise) with every sampler setting
through `sample_ddpm.py`'s code and scores each folder against one held-out real set with
`ddpm-lesion evaluate`'s own scoring (`score_space`, on features extracted once per
folder instead of once per comparison), and adds a paired comparison with the reference
setting: on each of the same random subsets (same real images, same indices),
KID(candidate) - KID(reference). The evidence behind `SampleConfig`'s default sampler
(BENCHMARKS.md).

    python bench/samplers.py                                   # demo model, ~30 min on 1 core
    python bench/samplers.py --model_dir /tmp/bench-run --real_set melanoma
    python bench/samplers.py --model_dir runs/melanoma --real_dir ISIC/heldout_melanoma --resolution 64
    python bench/samplers.py --model_dir runs/melanoma --real_dir ISIC/heldout_melanoma --resolution 64 \
        --settings ddim:16 ddim:20 runs/melanoma-4step@ddim:4     # a distilled student against its teacher
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from common import DEMO_MODEL, machine, markdown_table, write_real_set

from ddpm_lesion.core.options import MixedPrecision
from ddpm_lesion.data.evaluation_sets import load_image_set
from ddpm_lesion.evaluate.audit import EvalConfig, score_space
from ddpm_lesion.evaluate.features import FeatureSpace, cached_features, resolve_extractors
from ddpm_lesion.evaluate.metrics import paired_kid_difference
from ddpm_lesion.sample.generation import generate
from ddpm_lesion.sample.sample_config import SampleConfig
from ddpm_lesion.sample.samplers import SchedulerName

DEFAULT_SETTINGS = ["ddpm:50", "ddim:10", "ddim:20", "ddim:25", "dpmsolver++:10", "dpmsolver++:20", "unipc:10",
                    "unipc:20", "dpmsolver++:20:bf16", "ddpm:50:bf16"]
# What each real set is: the distribution a model was trained on, from an unseen seed stream.
REAL_SETS = {
    "pretrain": {"size": 32, "malignant": None, "varied": True},  # the demo model's pretraining data
    "melanoma": {"size": 48, "malignant": True, "varied": False},  # demo/data's target=1 images
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default=str(DEMO_MODEL))
    parser.add_argument("--real_set", choices=sorted(REAL_SETS), default="pretrain",
                        help="procedural held-out images matching a demo model's training data")
    parser.add_argument("--num_real", type=int, default=1000)
    parser.add_argument("--real_dir", type=Path, default=None, help="a folder of real images instead of --real_set")
    parser.add_argument("--resolution", type=int, default=32, help="images are compared at this size")
    parser.add_argument("--num_images", type=int, default=500, help="synthetic images per setting")
    parser.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS,
                        metavar="[MODEL@]SCHEDULER:STEPS[:PRECISION]",
                        help="MODEL@ samples another model folder than --model_dir, e.g. a distilled student")
    parser.add_argument("--reference", default="ddpm:50", help="the setting every other is compared with")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/ddpm-lesion-bench/samplers"))
    parser.add_argument("--subsets", type=int, default=100)
    parser.add_argument("--subset_size", type=int, default=100)
    return parser.parse_args()


def setting_place(args: argparse.Namespace, setting: str) -> tuple[str, str, str]:
    """(model folder, sampler spec, folder-safe name) of a setting `[MODEL@]SCHEDULER:STEPS[:PRECISION]`;
    without `MODEL@` the setting samples `--model_dir`. A model's images and features are kept
    under its name and a hash of its path, so another run naming the same model and spec
    reuses them, and two models of the same name never share a folder."""
    model, _, spec = setting.rpartition("@")
    model = model or args.model_dir
    return model, spec, f"{model_key(model)}/{spec.replace(':', '-')}"


def model_key(model: str) -> str:
    return f"{Path(model).name}-{hashlib.sha256(str(Path(model).resolve()).encode()).hexdigest()[:8]}"


def sample_folder(args: argparse.Namespace, setting: str) -> tuple[Path, float]:
    """Generate (or resume) the images of one setting; seconds per image of this call."""
    model, spec, name = setting_place(args, setting)
    scheduler, steps, *precision = spec.split(":")
    out = args.work_dir / name
    cfg = SampleConfig(model_dir=model, output_dir=out, num_images=args.num_images, batch_size=50,
                       scheduler=SchedulerName(scheduler), num_inference_steps=int(steps),
                       mixed_precision=MixedPrecision((precision or ["no"])[0]),
                       seed=0)
    summary = generate(cfg)
    return out, summary.seconds / summary.made if summary.made else float("nan")


def main() -> None:
    args = parse_args()
    settings = list(dict.fromkeys([args.reference, *args.settings]))
    real_dir = args.real_dir or write_real_set(args.work_dir / f"real-{args.real_set}", args.num_real,
                                               **REAL_SETS[args.real_set])
    eval_config = EvalConfig(features=[FeatureSpace.EFFICIENTNET, FeatureSpace.PIXELS], resolution=args.resolution,
                             kid_subsets=args.subsets, kid_subset_size=args.subset_size)
    extractors, _ = resolve_extractors(eval_config.features)
    cache = args.work_dir / "features"
    real_feats = folder_features("real", real_dir, cache / model_key(args.model_dir) / "real", extractors,
                                 eval_config.resolution)

    results, feats = {}, {}
    for setting in settings:
        folder, seconds = sample_folder(args, setting)
        feats[setting] = folder_features("synthetic", folder / "individual", cache / setting_place(args, setting)[2],
                                         extractors, eval_config.resolution)
        results[setting] = {"seconds_per_image": seconds, "kid": {
            e.key: score_space(real_feats[e.key], feats[setting][e.key], e, eval_config)[0]["metrics"]["kid"]
            for e in extractors}}

    rng_seed = 0
    for setting in settings:
        for e in extractors:
            results[setting]["kid"][e.key]["paired_delta"] = paired_kid_difference(
                real_feats[e.key], feats[setting][e.key], feats[args.reference][e.key], args.subsets,
                args.subset_size, rng_seed)._asdict()
    report(args, settings, results, [e.key for e in extractors])


def folder_features(role: str, folder: Path, cache: Path, extractors: list, resolution: int) -> dict[str, np.ndarray]:
    """Features of every image in `folder`, cached beside `cache` (see `cached_features`)."""
    return cached_features(extractors, lambda: load_image_set(role, folder, resolution).pixels,
                           cache.with_name(f"{cache.name}-{resolution}px"))


def report(args: argparse.Namespace, settings: list[str], results: dict, spaces: list[str]) -> None:
    header = ["setting", "s/img (this run)"]
    for key in spaces:
        header += [f"KID {key} ×1e3 [2.5–97.5%]", f"Δ vs {args.reference} ×1e3 [2.5–97.5%], P(lower)"]
    rows = []
    for setting in settings:
        seconds = results[setting]["seconds_per_image"]
        row = [setting, "made earlier" if np.isnan(seconds) else f"{seconds:.3f}"]
        for key in spaces:
            kid = results[setting]["kid"][key]
            delta = kid["paired_delta"]
            row += [f"{1e3 * kid['value']:.2f} [{1e3 * kid['ci_low']:.2f}, {1e3 * kid['ci_high']:.2f}]",
                    "—" if setting == args.reference else
                    f"{1e3 * delta['mean']:+.2f} [{1e3 * delta['low']:+.2f}, {1e3 * delta['high']:+.2f}], "
                    f"{delta['candidate_lower']:.2f}"]
        rows.append(row)
    real = (str(args.real_dir) if args.real_dir else
            f"{args.num_real} procedural '{args.real_set}' images (held-out seed stream)")
    text = (f"model: {args.model_dir}; real: {real}; {args.num_images} synthetic per setting, seed 0; KID: "
            f"{args.subsets} subsets of {args.subset_size}\n\n" + markdown_table(header, rows))
    print("\n" + "\n".join(f"{k}: {v}" for k, v in machine().items()) + "\n\n" + text)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / f"samplers-{Path(args.model_dir).name}.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
