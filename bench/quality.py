"""Sample quality on real dermoscopy texture: fine-tune -> sample -> evaluate, per recipe.

Runs the chain a user runs, with the project's own scripts (`train_ddpm.py`, `sample_ddpm.py`,
then `ddpm_lesion.evaluate`), on the 995 real 32x32 PH² patches of `../shared/data/ph2-dev`
(not bundled: research use only; cite PH², Mendonça et al. 2013). 422 of those files are
byte-identical repeats, so the patches are deduplicated by their bytes before a seeded split
into training, validation (checkpoint KID and the sampler choice of `--validation_data_dir`)
and held-out images; every number in the table is measured on the held-out images alone.

Recipes: `origin` = the demo's fine-tune (`scripts/demo.sh`: the bundled cartoon-pretrained
tiny model, lr 1e-4 with 20 warm-up steps, 1,500 steps of batch 16, EMA, horizontal flips),
sampled with DDPM-50; `small-data` = `configs/small-data.yaml`, sampled with `sample_ddpm.py`'s
defaults (the sampler its training run chose, `sampler.json`). Screen an ingredient with
`NAME=FLAGS`, flags added to the origin's (or with `--base small-data` to the recipe's), e.g.
`dihedral="--augmentation dihedral"`.
A row per recipe: KID x1e3 [2.5-97.5%] in EfficientNet-Lite0 features, precision, recall,
coverage (k = 5), training images copied (among the images written; the recipe is sampled
with sample_ddpm.py's default copy check, so its row also counts the near copies that check
replaced), off-colour fraction (mean colour with blue or green above red), minutes of
`train_ddpm.py` (for the recipe including its checkpoint KIDs and its sampler choice, also
shown alone) and sampling images/s; the recipe is also sampled with DDPM-50 on the same
weights, for the speed-up of its chosen sampler at equal quality; plus the floor (the training
patches themselves scored as if generated). Rerunning resumes: finished stages are read back.

    python bench/quality.py origin small-data              # ~20 min on 2 CPU cores
    python bench/quality.py dihedral="--augmentation dihedral" snr5="--snr_gamma 5"
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from common import REPO, machine, markdown_table

from ddpm_lesion.core.fileio import write_text_atomic
from ddpm_lesion.data.evaluation_sets import load_image_set
from ddpm_lesion.evaluate import metrics
from ddpm_lesion.evaluate.audit import EvalConfig, evaluate_folders

DATA = REPO.parent / "shared" / "data" / "ph2-dev"
RESOLUTION = 32
ORIGIN = ["--pretrained_model_name_or_path", str(REPO / "demo" / "pretrained" / "ddpm-lesion-tiny-32"),
          "--train_batch_size", "16", "--max_train_steps", "1500", "--learning_rate", "1e-4", "--lr_warmup_steps", "20",
          "--use_ema", "--checkpointing_steps", "500", "--save_images_steps", "1500", "--seed", "0"]
# The origin's sampler, which wrote every image as sampled: without sample_ddpm.py's default
# copy check, so these rows' copies are the model's own (the recipe's rows are checked).
ORIGIN_SAMPLER = ["--scheduler", "ddpm", "--num_inference_steps", "50", "--no_reject_copies"]
# name -> (train_ddpm.py flags, sample_ddpm.py flags, validate): only the recipe trains with
# --validation_data_dir, which also picks its sampler; the origin and the screens do not, so
# their training minutes are the fine-tune's alone.
BUILT_IN = {"origin": (ORIGIN, ORIGIN_SAMPLER, False),
            "small-data": (["--config", str(REPO / "configs" / "small-data.yaml")], [], True)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", help="origin, small-data, or NAME=FLAGS (added to the origin's flags)")
    parser.add_argument("--data", type=Path, default=DATA, help="the ph2-dev folder (holding images/)")
    parser.add_argument("--work_dir", type=Path, default=Path("/tmp/ddpm-lesion-bench/quality"))
    parser.add_argument("--train_size", type=int, default=300, help="unique patches to train on")
    parser.add_argument("--validation_size", type=int, default=73, help="unique patches for --validation_data_dir; "
                                                                          "the rest (200) are held out")
    parser.add_argument("--num_images", type=int, default=500, help="images sampled per recipe")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split")
    parser.add_argument("--sample_flags", default="", help="extra sample_ddpm.py flags for NAME=FLAGS recipes "
                                                           "(default: the base recipe's sampler)")
    parser.add_argument("--base", choices=sorted(BUILT_IN), default="origin",
                        help="the recipe NAME=FLAGS adds its flags to (small-data: with its validation and "
                             "sampler choice)")
    return parser.parse_args()


def split(data: Path, out: Path, train_size: int, validation_size: int, seed: int) -> dict[str, Path]:
    """Unique patches (by bytes; the first name of each repeat kept), ordered by content hash,
    permuted by `seed`, copied into out/{train,validation,held_out}."""
    unique: dict[str, Path] = {}
    for path in sorted((data / "images").glob("*.png")):
        unique.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), path)
    order = [unique[h] for h in sorted(unique)]
    order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    if train_size + validation_size >= len(order):
        raise SystemExit(f"{len(order)} unique patches: --train_size + --validation_size must leave some held out")
    parts = {"train": order[:train_size], "validation": order[train_size:train_size + validation_size],
             "held_out": order[train_size + validation_size:]}
    folders = {}
    for name, paths in parts.items():
        folder = out / f"split-seed{seed}" / name
        if not folder.is_dir() or len(list(folder.glob("*.png"))) != len(paths):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for path in paths:
                shutil.copyfile(path, folder / path.name)
        folders[name] = folder
    print(f"{len(list((data / 'images').glob('*.png')))} files, {len(unique)} unique: "
          + ", ".join(f"{name} {len(paths)}" for name, paths in parts.items()), flush=True)
    return folders


def recipe_flags(spec: str, sample_flags: str, base: str) -> tuple[str, list[str], list[str], bool]:
    if spec in BUILT_IN:
        return spec, *BUILT_IN[spec]
    name, sep, flags = spec.partition("=")
    if not sep:
        raise SystemExit(f"recipe {spec!r}: give origin, small-data or NAME=FLAGS")
    base_train, base_sample, validate = BUILT_IN[base]
    return name, base_train + shlex.split(flags), shlex.split(sample_flags) or base_sample, validate


def timed(command: list[str], record: Path) -> float:
    """Run a stage once; its wall-clock seconds are kept in `record`, so a rerun reads them back."""
    if record.is_file():
        return json.loads(record.read_text())["seconds"]
    print("$ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    seconds = time.perf_counter() - started
    write_text_atomic(record, json.dumps({"seconds": seconds, "command": command}))
    return seconds


def score(folders: dict[str, Path], synthetic: Path, check_copies: bool = True) -> dict:
    """The table's numbers for one folder of images against the held-out patches."""
    config = EvalConfig(features=["efficientnet"], resolution=RESOLUTION, kid_subsets=100)
    result = evaluate_folders(folders["held_out"], synthetic, folders["train"] if check_copies else None, config)
    space = next(iter(result["feature_spaces"].values()))["metrics"]
    pixels = load_image_set("synthetic", synthetic, RESOLUTION).pixels
    return {"kid": space["kid"]["value"], "kid_low": space["kid"]["ci_low"], "kid_high": space["kid"]["ci_high"],
            "precision": space["precision"]["value"], "recall": space["recall"]["value"],
            "coverage": space["coverage"]["value"],
            "copies": result["memorization"]["n_near_copies"] if check_copies else None,
            "n": len(pixels), "off_colour": metrics.off_colour_fraction(pixels.reshape(len(pixels), -1, 3).mean(1))}


def run_recipe(spec: str, folders: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    """Train once, then sample and score: with the recipe's sampler, and for a recipe that
    chose its own sampler also with DDPM-50 on the same weights (the speed-up and both KIDs)."""
    name, train_flags, sample_flags, validate = recipe_flags(spec, args.sample_flags, args.base)
    work = args.work_dir / name
    run = work / "run"
    work.mkdir(parents=True, exist_ok=True)
    train_seconds = timed([sys.executable, "train_ddpm.py", *train_flags, "--train_data_dir", str(folders["train"]),
                           "--resolution", str(RESOLUTION), "--output_dir", str(run),
                           *(["--validation_data_dir", str(folders["validation"])] if validate else []),
                           "--cache_dir", str(args.work_dir / "cache"), "--resume_from_checkpoint", "latest"],
                          work / "train_time.json")
    choice = json.loads((run / "sampler.json").read_text()) if (run / "sampler.json").is_file() else None
    rows = []
    runs = [(name, sample_flags, "samples", "sample_time.json")]
    if choice:
        runs.append((f"{name}, DDPM-50", ORIGIN_SAMPLER, "samples-ddpm50", "sample-ddpm50_time.json"))
    for label, flags, folder, record in runs:
        samples = work / folder
        sample_seconds = timed([sys.executable, "sample_ddpm.py", "--model_dir", str(run), "--num_images",
                                str(args.num_images), "--output_dir", str(samples), "--seed", "0", *flags],
                               work / record)
        config = yaml.safe_load((samples / "sample_config.yaml").read_text())
        rows.append({"recipe": label, "train_flags": train_flags, "sample_flags": flags,
                     "sampler": f"{config['scheduler']}:{config['num_inference_steps']}",
                     "train_minutes": train_seconds / 60, "images_per_second": args.num_images / sample_seconds,
                     "sampler_choice_minutes": None if choice is None else choice["seconds"] / 60,
                     "rejected": replaced_slots(samples / "rejected.csv"), **score(folders, samples / "individual")})
        print(json.dumps(rows[-1]), flush=True)
    write_text_atomic(work / "rows.json", json.dumps(rows, indent=2))
    return rows


def replaced_slots(rejected_csv: Path) -> int | None:
    """How many images sample_ddpm.py replaced as near copies of training images (None: not checked)."""
    if not rejected_csv.is_file():
        return None
    with open(rejected_csv, newline="") as handle:
        return len({row["index"] for row in csv.DictReader(handle)})


def table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        body.append([r["recipe"], r.get("sampler", "—"),
                     f"{1e3 * r['kid']:.1f} [{1e3 * r['kid_low']:.1f}, {1e3 * r['kid_high']:.1f}]",
                     f"{r['precision']:.2f}", f"{r['recall']:.2f}", f"{r['coverage']:.2f}",
                     "—" if r["copies"] is None else f"{r['copies']}/{r['n']}",
                     "—" if r.get("rejected") is None else str(r["rejected"]), f"{100 * r['off_colour']:.1f}%",
                     "—" if "train_minutes" not in r else f"{r['train_minutes']:.1f}",
                     "—" if r.get("sampler_choice_minutes") is None else f"{r['sampler_choice_minutes']:.1f}",
                     "—" if "images_per_second" not in r else f"{r['images_per_second']:.1f}"])
    return markdown_table(["recipe", "sampler", "KID ×1e3 [2.5–97.5%]", "precision", "recall", "coverage", "copies",
                           "replaced as copies while sampling", "off-colour", "train min", "of which sampler choice",
                           "sample img/s"], body)


def main() -> None:
    args = parse_args()
    info = machine()
    folders = split(args.data, args.work_dir, args.train_size, args.validation_size, args.seed)
    floor = {"recipe": "floor: training patches as samples", **score(folders, folders["train"], check_copies=False)}
    rows = [floor] + [row for spec in args.recipes for row in run_recipe(spec, folders, args)]
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(table(rows))
    names = "+".join(name.partition("=")[0] for name in args.recipes)
    write_text_atomic(args.work_dir / f"results-{names}.json", json.dumps({"machine": info, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
