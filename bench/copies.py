"""Copy-robustness benchmark: how many edited copies of training images the copy detector
flags, per edit, and how many distinct held-out images it wrongly flags, at its automatic
threshold (issue 16).

Two image sets: the real dermoscopy patches of `../shared/data/ph2-dev` (skipped when
absent; exact duplicate files are dropped first — 422 of its 995 files repeat another one
byte for byte, which would otherwise put the same picture on both sides of the split),
split 300 train / the rest held out; and procedural lesions (`ddpm_lesion.procedural`),
300 train / 200 held out. Each edit of `ddpm_lesion.copy_edits` is applied to every 3rd
training image (100 copies per edit and draw, 3 draws).

    python bench/copies.py [--data ../shared/data/ph2-dev/images] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout on sys.path)
import numpy as np
from PIL import Image

from ddpm_lesion.data.demo_lesions import draw_lesion
from ddpm_lesion.evaluate import copy_detection, copy_edits

N_TRAIN = 300
SOURCE_STRIDE = 3


def unique_images(folder: Path) -> np.ndarray:
    """The folder's PNGs as uint8 32x32 RGB, byte-identical repeats dropped (first kept)."""
    seen, images = set(), []
    for path in sorted(folder.glob("*.png")):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        digest = hashlib.sha1(pixels.tobytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            images.append(pixels)
    return np.stack(images)


def procedural(n: int, seed: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(draw_lesion(rng, 32, malignant=bool(i % 2), varied=True)) for i in range(n)])


def measure(images: np.ndarray, edit_seeds: int) -> dict:
    """Detection rate per edit (over `edit_seeds` draws of each edit's random parts, 100
    copies each) and the held-out false-positive rate at the auto threshold."""
    order = np.random.default_rng(0).permutation(len(images))
    train, held = images[order[:N_TRAIN]], images[order[N_TRAIN:]]
    started = time.perf_counter()
    index = copy_detection.build_index(train)
    built = time.perf_counter() - started
    fresh = copy_detection.nearest_copies(held, index)
    result = {"n_train": len(train), "n_held_out": len(held), "threshold_median": float(np.median(index.thresholds)),
              "held_out_flagged": float(fresh.near_copy.mean()), "index_seconds": built,
              "held_out_ratio_lowest": sorted(np.round(fresh.distance / fresh.threshold, 3).tolist())[:5], "edits": {}}
    sources = np.arange(0, len(train), SOURCE_STRIDE)
    repeated = np.tile(sources, edit_seeds)
    for name in copy_edits.ALL_EDITS:
        copies = []
        for seed in range(1, edit_seeds + 1):
            rng = np.random.default_rng(seed)
            copies += [copy_edits.apply(name, train[i], rng) for i in sources]
        found = copy_detection.nearest_copies(np.stack(copies), index)
        result["edits"][name] = {"flagged": float(found.near_copy.mean()),
                                 "lowest_seed": float(found.near_copy.reshape(edit_seeds, -1).mean(axis=1).min()),
                                 "ratio_p95": float(np.percentile(found.distance / found.threshold, 95)),
                                 "right_source": float(np.mean(found.index == repeated))}
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=common.REPO.parent / "shared" / "data" / "ph2-dev" / "images")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--edit_seeds", type=int, default=3,
                        help="draws of each edit's random parts (crop corner, shift direction, noise), 100 copies each: "
                             "one draw moved a rate by up to 3 points")
    parser.add_argument("--sets", default="procedural,ph2-dev", help="which image sets to measure (comma-separated)")
    args = parser.parse_args()
    wanted = args.sets.split(",")
    sets = {"procedural": procedural(N_TRAIN + 200)} if "procedural" in wanted else {}
    if "ph2-dev" in wanted and args.data.is_dir():
        sets["ph2-dev"] = unique_images(args.data)
    elif "ph2-dev" in wanted:
        print(f"{args.data} not found: real-patch benchmark skipped")
    results = {name: measure(images, args.edit_seeds) for name, images in sets.items()}
    names = list(results)
    print(f"{'edit':26s}" + "".join(f"{n:>22s}" for n in names))
    for edit in copy_edits.ALL_EDITS:
        cells = (results[n]["edits"][edit] for n in names)
        print(f"{edit:26s}" + "".join(f"{c['flagged']:.1%} (min {c['lowest_seed']:.0%})".rjust(22) for c in cells))
    print(f"{'held-out flagged':26s}" + "".join(f"{results[n]['held_out_flagged']:>22.1%}" for n in names))
    for key in ("threshold_median", "index_seconds", "seconds"):
        print(f"{key:26s}" + "".join(f"{results[n][key]:>22.4f}" for n in names))
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
