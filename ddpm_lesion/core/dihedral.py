"""The 8 orientations of a square image (the dihedral group D4): 4 quarter turns, each
with or without a mirror flip.

Skin seen through a dermatoscope has no up and no left, so every orientation of a real
patch is an equally real patch. Quarter turns and flips only move pixels: no resampling,
no blur, no new colours. Shared by the diffusion fine-tune (`train.losses`) and the
utility classifier, so both draw orientations the same way.
"""

from __future__ import annotations

import torch


def random_orientations(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of a [B, C, H, H] batch in one of the 8 orientations, drawn uniformly and
    independently per image from `generator` (a CPU generator: the same draws on any device).

    Draws B quarter-turn counts, then B flip bits, so a batch's orientations are a pure
    function of the generator's state.
    """
    n = len(batch)
    turns = torch.randint(0, 4, (n,), generator=generator).to(batch.device)
    flips = torch.randint(0, 2, (n,), generator=generator).bool().to(batch.device)
    out = batch.clone()
    for k in range(1, 4):
        chosen = turns == k
        out[chosen] = torch.rot90(batch[chosen], k, dims=(-2, -1))
    return torch.where(flips[:, None, None, None], out.flip(-1), out)
