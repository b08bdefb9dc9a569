"""The 8 orientations: exactly the dihedral group, each reached, seeded."""

from __future__ import annotations

import torch

from ddpm_lesion.core.dihedral import random_orientations


def dihedral_group(image: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of a square written out by hand: turns 0-3, then each turn transposed."""
    turns = [image, image.transpose(-2, -1).flip(-1), image.flip(-2).flip(-1), image.transpose(-2, -1).flip(-2)]
    return turns + [t.transpose(-2, -1) for t in turns]


def test_every_output_is_one_of_the_8_orientations_and_all_8_occur():
    image = torch.arange(3 * 5 * 5, dtype=torch.uint8).reshape(3, 5, 5)  # no symmetry: 8 distinct variants
    group = dihedral_group(image)
    assert len({tuple(g.flatten().tolist()) for g in group}) == 8
    out = random_orientations(image.expand(400, 3, 5, 5), torch.Generator().manual_seed(0))
    hits = [next(i for i, g in enumerate(group) if torch.equal(o, g)) for o in out]  # StopIteration if not in D4
    counts = torch.bincount(torch.tensor(hits), minlength=8)
    assert (counts > 25).all(), counts  # 400 draws of 8 equally likely orientations: ~50 each


def test_pure_function_of_the_generator_and_leaves_the_input_alone():
    batch = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    before = batch.clone()
    a = random_orientations(batch, torch.Generator().manual_seed(3))
    b = random_orientations(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(batch, before)
