"""Frame normalisation and tiling: the one place that decides what a model sees.

Camera counts have no fixed scale (8-bit PNGs, 16-bit detectors, changing exposure), so every
frame is standardised on its own statistics before it meets a model, in training and serving
alike. Large frames are cut into overlapping square tiles; per-pixel maps are stitched back
here, while instance tiles are merged by owned regions in ``loopstream.serving.instance_merge``.

Examples
--------
>>> import numpy as np
>>> tiles = tile_grid((1000, 700), tile_px=512, overlap_px=64)
>>> len(tiles), tiles[0]
(6, Tile(y0=0, x0=0, size=512))
>>> float(abs(standardise(np.arange(16, dtype=np.uint16).reshape(4, 4)).mean())) < 1e-6
True
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np


class Tile(NamedTuple):
    y0: int
    x0: int
    size: int


def standardise(frame: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation, float32; a flat frame maps to zeros."""
    image = frame.astype(np.float32)
    mean = float(image.mean())
    std = float(image.std())
    return (image - mean) / max(std, 1e-6)


def tile_starts(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start offsets of tiles covering ``length_px`` with at least ``overlap_px`` overlap."""
    if length_px <= tile_px:
        return [0]
    stride = tile_px - overlap_px
    n = int(np.ceil((length_px - tile_px) / stride)) + 1
    return [round(i * (length_px - tile_px) / (n - 1)) for i in range(n)]


def tile_grid(shape: tuple[int, int], tile_px: int, overlap_px: int) -> list[Tile]:
    """Tiles (row-major) covering a frame of ``shape``; frames smaller than a tile get one tile."""
    h, w = shape
    return [
        Tile(y0, x0, tile_px)
        for y0 in tile_starts(h, tile_px, overlap_px)
        for x0 in tile_starts(w, tile_px, overlap_px)
    ]


def cut_tiles(image: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    """Stack of tiles [N, 1, size, size]; parts outside the frame are zero (the standardised mean)."""
    size = tiles[0].size
    out = np.zeros((len(tiles), 1, size, size), np.float32)
    for i, t in enumerate(tiles):
        patch = image[t.y0 : t.y0 + size, t.x0 : t.x0 + size]
        out[i, 0, : patch.shape[0], : patch.shape[1]] = patch
    return out


def stitch(tile_maps: np.ndarray, tiles: list[Tile], shape: tuple[int, int]) -> np.ndarray:
    """Full-frame map [C, H, W] from per-tile maps [N, C, size, size].

    Each pixel takes the value of the tile whose centre is nearest (the middle of the overlap is
    the seam), so predictions near a tile's edge, which lack context, are not used where a
    neighbour sees the pixel from further inside.
    """
    h, w = shape
    out = np.empty((tile_maps.shape[1], h, w), np.float32)
    ys = sorted({t.y0 for t in tiles})
    xs = sorted({t.x0 for t in tiles})
    size = tiles[0].size
    y_cuts = _seams(ys, size, h)
    x_cuts = _seams(xs, size, w)
    for i, t in enumerate(tiles):
        r0, r1 = y_cuts[ys.index(t.y0)]
        c0, c1 = x_cuts[xs.index(t.x0)]
        out[:, r0:r1, c0:c1] = tile_maps[i, :, r0 - t.y0 : r1 - t.y0, c0 - t.x0 : c1 - t.x0]
    return out


def _seams(starts: list[int], size: int, length: int) -> list[tuple[int, int]]:
    """The [begin, end) range each tile along one axis is responsible for."""
    bounds = [0]
    for a, b in itertools.pairwise(starts):
        bounds.append((b + a + size) // 2)  # middle of the overlap of tiles at a and b
    bounds.append(length)
    return list(itertools.pairwise(bounds))
