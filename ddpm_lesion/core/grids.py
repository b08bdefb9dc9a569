"""Contact sheets: many same-sized images tiled into one, for a quick look at a run.

Generic on purpose: sampling writes preview grids of finished images and training writes
grids of its periodic samples with the same function.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def make_grid(images: Sequence[Image.Image | np.ndarray], ncols: int, padding: int = 2,
              fill: int | tuple[int, ...] = 0) -> Image.Image:
    """Tile `images` row by row, `ncols` per row, with `padding` pixels of `fill` around
    each; a short last row is left blank on the right.

    Args:
        images: PIL images or HxW / HxWxC uint8 arrays, all of the size and mode of the first.
        ncols: images per row (>= 1).
        padding: border width in pixels around and between images.
        fill: border colour in the images' mode (e.g. 0 or (255, 255, 255)).
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    tiles = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in images]
    width, height = tiles[0].size
    if any(t.size != (width, height) or t.mode != tiles[0].mode for t in tiles):
        raise ValueError("make_grid needs images of one size and mode")
    ncols = min(ncols, len(tiles))
    nrows = -(-len(tiles) // ncols)
    grid = Image.new(tiles[0].mode, (ncols * (width + padding) + padding, nrows * (height + padding) + padding), fill)
    for k, tile in enumerate(tiles):
        row, col = divmod(k, ncols)
        grid.paste(tile, (padding + col * (width + padding), padding + row * (height + padding)))
    return grid
