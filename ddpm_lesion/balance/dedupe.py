"""Near-duplicate training images, found with the evaluate command's copy distance.

ISIC releases list the same picture more than once (re-saved, resized, or under two ids).
Fine-tuning on both copies doubles that image's weight and raises the chance the model
reproduces it, so `ddpm-lesion balance --dedupe` leaves all but the first copy out of
fine-tuning. The distance is the whole-image one of `copy_detection`: cosine distance between
32x32 zero-mean descriptors, minimised over flips and 90-degree rotations (no low-pass, no
shift: only the same picture comes this close). Its default threshold,
`copy_detection.DUPLICATE_DISTANCE`, is the one the copy audit uses to count training images
that are "the same picture".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddpm_lesion.evaluate.copy_detection import copy_descriptors, dihedral_descriptors, nearest_train

# Rows compared at once: bounds the (8 x CHUNK, N) similarity matrix to ~8 MB per 1000 images.
CHUNK = 128


@dataclass(frozen=True)
class Pair:
    index: int  # the later image: left out
    kept: int  # the earliest image of its group of copies: kept
    distance: float  # to its nearest earlier copy


def find_duplicates(images: np.ndarray, threshold: float) -> list[Pair]:
    """Images (uint8 `(N, H, W, 3)`, in CSV order) within `threshold` of an earlier image.

    Each image is compared with every earlier one, so the first copy of a picture is the
    one kept and every later copy is reported with that first copy (following chains of
    copies back to the kept one).
    """
    bank = copy_descriptors(images)
    kept_of: list[int] = []
    pairs = []
    for start in range(0, len(images), CHUNK):
        variants = dihedral_descriptors(images[start:start + CHUNK])
        if start:
            before_index, before_distance = nearest_train(variants, bank[:start])
        for offset in range(len(variants)):
            i = start + offset
            best, distance = (int(before_index[offset]), float(before_distance[offset])) if start else (-1, np.inf)
            if offset:  # earlier images of this chunk
                index, dist = nearest_train(variants[offset:offset + 1], bank[start:i])
                if dist[0] < distance:
                    best, distance = start + int(index[0]), float(dist[0])
            if distance <= threshold:
                kept_of.append(kept_of[best])
                pairs.append(Pair(i, kept_of[best], distance))
            else:
                kept_of.append(i)
    return pairs
