"""Which images and which random numbers each training micro-batch gets — as pure
functions of (seed, position), so an interrupted run resumes bit-exactly.

Instead of carrying a sampler's and a generator's hidden state through checkpoints, the
dataset is read as an endless stream of per-epoch permutations, and micro-batch `m` of
rank `r` simply takes stream positions `[(m * world + r) * B, ... + B)`. Ranks therefore
see disjoint images, every image is seen once per epoch, and a restarted run needs only
the step number to continue with exactly the batches it would have had. Because the slot
`m * world + r` names both the images and the random draws of a micro-batch, a run's
optimizer steps do not depend on how the global batch is split into processes and
accumulation steps (up to float rounding of the gradient sum).
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, well mixed so neighbouring steps/ranks/images get
    unrelated streams (seed+1 schemes correlate the first draws of torch's Philox/MT)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def epoch_permutation(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, 0xDA7A))
    return torch.randperm(num_items, generator=generator)


def micro_batch_indices(num_items: int, batch_size: int, micro_step: int, rank: int, world_size: int,
                        seed: int) -> torch.Tensor:
    """Dataset indices of micro-batch `micro_step` on `rank` (see the module docstring)."""
    start = (micro_step * world_size + rank) * batch_size
    positions = torch.arange(start, start + batch_size)
    epochs = positions // num_items
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        mask = epochs == epoch
        out[mask] = epoch_permutation(num_items, seed, epoch)[positions[mask] % num_items]
    return out


def micro_batch_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The CPU generator for one micro-batch's timesteps, noise and augmentation."""
    return torch.Generator().manual_seed(derive_seed(seed, micro_step, rank, 0x5EED))


def slot_generator(seed: int, micro_step: int, rank: int, world_size: int) -> torch.Generator:
    """The generator of micro-batch `micro_step` of `rank`, named by its slot
    `micro_step * world_size + rank` -- the same slot that places its images in the stream.
    The noise, timesteps and flips then follow the images, whatever the split: 4 processes
    x 1 accumulation step and 1 process x 4 accumulation steps draw the same numbers for the
    same images in each optimizer step. With one process it is `micro_batch_generator(seed,
    micro_step, 0)`, so single-process runs keep their draws."""
    return micro_batch_generator(seed, micro_step * world_size + rank, 0)


def steps_per_epoch(num_items: int, batch_size: int, world_size: int, accumulation: int) -> int:
    """Optimizer steps needed to see every image once (rounded up)."""
    per_step = batch_size * world_size * accumulation
    return max(1, -(-num_items // per_step))
