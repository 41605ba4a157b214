"""Frame normalisation and tiling: the one place that decides what a model sees.

Camera counts have no fixed scale (8-bit PNGs, 16-bit detectors, changing exposure), so every
frame is standardised on its own statistics before it meets a model, in training and serving
alike. Large frames are cut into overlapping tiles (square, or for networks with a stride the
fewest that overlap enough, each side padded only to the stride); per-pixel maps are stitched back
here, while instance tiles are merged by owned regions in ``loopstream.serving.instance_merge``.

Examples
--------
>>> import numpy as np
>>> tiles = tile_grid((1000, 700), tile_px=512, overlap_px=64)
>>> len(tiles), tiles[0]
(6, Tile(y0=0, x0=0, height=512, width=512))
>>> float(abs(standardise(np.arange(16, dtype=np.uint16).reshape(4, 4)).mean())) < 1e-6
True
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np


class Tile(NamedTuple):
    y0: int
    x0: int
    height: int
    width: int


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


def tile_side(length_px: int, tile_px: int, overlap_px: int, multiple_px: int = 0) -> int:
    """Along one axis of ``length_px``, the side of its tiles: ``tile_px``, or with ``multiple_px``
    (the network's stride) the smallest multiple of it that covers the axis with the fewest tiles
    of at most ``tile_px`` overlapping by at least ``overlap_px``: no more padding or overlap, so
    no more network work, than the axis needs.

    >>> tile_side(600, 2048, 64, 32), tile_side(1120, 2048, 64, 32), tile_side(4096, 2048, 64, 32)
    (608, 1120, 1408)
    >>> tile_side(2048, 512, 88, 32), tile_side(2048, 512, 88), tile_side(300, 512, 64)
    (480, 512, 512)
    """
    if not multiple_px:
        return tile_px
    n = 1 if length_px <= tile_px else math.ceil((length_px - overlap_px) / (tile_px - overlap_px))
    side = math.ceil((length_px + (n - 1) * overlap_px) / n)
    return min(tile_px, math.ceil(side / multiple_px) * multiple_px)


def tile_grid(shape: tuple[int, int], tile_px: int, overlap_px: int, multiple_px: int = 0) -> list[Tile]:
    """Tiles (row-major) covering a frame of ``shape``, all of one shape (``tile_side`` per axis);
    without ``multiple_px`` square, and frames smaller than a tile get one tile."""
    h, w = shape
    height, width = (tile_side(n, tile_px, overlap_px, multiple_px) for n in shape)
    return [
        Tile(y0, x0, height, width)
        for y0 in tile_starts(h, height, overlap_px)
        for x0 in tile_starts(w, width, overlap_px)
    ]


def cut_tiles(image: np.ndarray, tiles: list[Tile]) -> np.ndarray:
    """Stack of tiles [N, 1, height, width]; parts outside the frame are zero (the standardised
    mean)."""
    out = np.zeros((len(tiles), 1, tiles[0].height, tiles[0].width), np.float32)
    for i, t in enumerate(tiles):
        patch = image[t.y0 : t.y0 + t.height, t.x0 : t.x0 + t.width]
        out[i, 0, : patch.shape[0], : patch.shape[1]] = patch
    return out


def stitch(tile_maps: Sequence[np.ndarray], tiles: list[Tile], shape: tuple[int, int]) -> np.ndarray:
    """Full-frame map [C, H, W] from per-tile maps [N, C, height, width] (see ``Mosaic``; the one
    tile's own map, not a copy, where one tile covers the frame)."""
    h, w = shape
    return Mosaic(tile_maps, tiles, shape).crop(slice(0, h), slice(0, w))


class Mosaic:
    """The stitched frame of per-tile maps ([C, height, width] each, in ``tiles`` order), read only
    where it is needed.

    Each pixel takes the value of the tile whose centre is nearest (the middle of the overlap is
    the seam), so predictions near a tile's edge, which lack context, are not used where a
    neighbour sees the pixel from further inside. Post-processing reads whole-frame masks and
    small crops: materialising the whole float map costs more than all the rest of it.
    """

    def __init__(self, tile_maps: Sequence[np.ndarray], tiles: list[Tile], shape: tuple[int, int]) -> None:
        if len(tile_maps) != len(tiles):
            raise ValueError(f"{len(tile_maps)} tile maps for {len(tiles)} tiles")
        self.tile_maps = tile_maps
        self.shape = shape
        ys = sorted({t.y0 for t in tiles})
        xs = sorted({t.x0 for t in tiles})
        self._y_bounds = seam_bounds(ys, tiles[0].height, shape[0])
        self._x_bounds = seam_bounds(xs, tiles[0].width, shape[1])
        self._tile_at = np.empty((len(ys), len(xs)), int)
        for i, t in enumerate(tiles):
            self._tile_at[ys.index(t.y0), xs.index(t.x0)] = i
        self._origin = [(t.y0, t.x0) for t in tiles]

    def blocks(self, rows: slice, cols: slice) -> Iterator[tuple[int, slice, slice]]:
        """(tile index, frame rows, frame columns) of each tile's share of a window."""
        y_parts = _parts(self._y_bounds, rows.start, rows.stop)
        x_parts = _parts(self._x_bounds, cols.start, cols.stop)
        for iy, r0, r1 in y_parts:
            for ix, c0, c1 in x_parts:
                yield int(self._tile_at[iy, ix]), slice(r0, r1), slice(c0, c1)

    def crop(self, rows: slice, cols: slice, channel: int | None = None) -> np.ndarray:
        """The stitched values in a window, [H, W] for one channel or [C, H, W] for all: a view of
        a tile's map where the window lies in that tile's share (most loops), so read, not write."""
        channels = slice(None) if channel is None else channel
        blocks = list(self.blocks(rows, cols)) if len(self.tile_maps) > 1 else [(0, rows, cols)]
        if len(blocks) == 1:
            y0, x0 = self._origin[blocks[0][0]]
            tile = self.tile_maps[blocks[0][0]]
            return tile[channels, rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0]
        shape: tuple[int, ...] = (rows.stop - rows.start, cols.stop - cols.start)
        first = self.tile_maps[0]
        if channel is None:
            shape = (first.shape[0], *shape)
        out = np.empty(shape, first.dtype)
        for i, r, c in blocks:
            y0, x0 = self._origin[i]
            source = self.tile_maps[i][channels, r.start - y0 : r.stop - y0, c.start - x0 : c.stop - x0]
            out[
                ..., r.start - rows.start : r.stop - rows.start, c.start - cols.start : c.stop - cols.start
            ] = source
        return out

    def select(self, channel: int, predicate: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Whole-frame boolean mask: ``predicate`` applied to each tile's share of one channel."""
        h, w = self.shape
        shares = []
        for i, r, c in self.blocks(slice(0, h), slice(0, w)):
            y0, x0 = self._origin[i]
            shares.append(
                (r, c, self.tile_maps[i][channel, r.start - y0 : r.stop - y0, c.start - x0 : c.stop - x0])
            )
        if len(shares) == 1:  # one tile holds the frame (a whole-frame network): no copy
            return np.ascontiguousarray(predicate(shares[0][2]))
        out = np.empty((h, w), bool)
        for r, c, share in shares:
            out[r, c] = predicate(share)
        return out


def seam_bounds(starts: list[int], size: int, length: int) -> list[int]:
    """Along one axis, tile k (of ``size``, at ``starts[k]``) owns [bounds[k], bounds[k + 1])."""
    bounds = [0]
    for a, b in itertools.pairwise(starts):
        bounds.append((b + a + size) // 2)  # middle of the overlap of tiles at a and b
    bounds.append(length)
    return bounds


def _parts(bounds: list[int], start: int, stop: int) -> list[tuple[int, int, int]]:
    """(tile position, begin, end) of the tiles along one axis sharing [start, stop)."""
    first = bisect.bisect_right(bounds, start) - 1
    last = bisect.bisect_left(bounds, stop) - 1
    return [(k, max(bounds[k], start), min(bounds[k + 1], stop)) for k in range(first, last + 1)]
