"""Which images each process makes: fixed blocks of indices, dealt out to shards and processes.

Float results of the network depend (by ~1e-6) on the batch it runs in: BLAS and oneDNN
kernels tile the batch, and a row computed in a partial tile is rounded differently from
one in a full tile. That is enough to flip a uint8 pixel now and then. So the network
always runs on the same canonical blocks -- indices `[k*B, (k+1)*B)` for batch size `B`,
the last one padded with indices past the end whose images are thrown away -- and work is
handed out in whole blocks. Every image is then computed in exactly the same batch
whatever the number of processes, shards, restarts or `--num_images`, which is what makes
the union of shards byte-identical to a single-process run.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ddpm_lesion.core.errors import UserError


class Shard(NamedTuple):
    """Part `index` (0-based) of `count` equal parts of the work."""

    index: int
    count: int


WHOLE = Shard(0, 1)


def parse_shard(text: str | None) -> Shard:
    """`"K/N"` -> `Shard(K, N)`; `None` -> the whole job. K is 0-based, as in a SLURM array
    `--array=0-(N-1)` with `--shard $SLURM_ARRAY_TASK_ID/N`."""
    if text is None:
        return WHOLE
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. --shard 0/4 ... --shard 3/4.")
    return Shard(int(match[1]), int(match[2]))


def num_blocks(num_images: int, block_size: int) -> int:
    return -(-num_images // block_size)


def block_indices(block: int, block_size: int) -> range:
    """All indices the network computes for `block`, including padding past `num_images`."""
    return range(block * block_size, (block + 1) * block_size)


def shard_blocks(total_blocks: int, shard: Shard) -> range:
    """The blocks a shard job makes: every `shard.count`-th, starting at `shard.index`.

    Striding (rather than contiguous ranges) keeps shards balanced when a folder is resumed
    after most of its first blocks were made. Inside a job, the processes share the blocks
    still missing (see `ddpm_lesion.sample.generation`), so shard jobs may each use any number of
    processes and together still cover every block exactly once.
    """
    return range(shard.index, total_blocks, shard.count)
