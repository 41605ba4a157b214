"""Integration of consecutive frames: fewer, less noisy frames from a fast in-situ camera.

A camera at 40-400 frames/s gives frames too noisy (and too many) to analyse one by one; adding ``n``
consecutive frames trades time resolution for signal. ``"sum"`` keeps counts (electrons add up) in an
integer type wide enough that ``n`` full-scale frames cannot overflow (uint16 x 4 -> uint32; floats
stay float, at least float32); ``"mean"`` keeps the intensity scale of one frame, in float32 (float64
for 32/64-bit integer or float64 input).
An integrated frame takes the timestamp and pixel size of its first frame; a run whose length is not a
multiple of ``n`` ends with one frame of fewer, so no frame is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from loopstream.client.formats import SourceError

if TYPE_CHECKING:  # sources imports this module to build integrated sources
    from loopstream.client.sources import Frame

Mode = Literal["sum", "mean"]


class _Source(Protocol):
    skipped: list[str]

    def __iter__(self) -> Iterator[Frame]: ...

    def __len__(self) -> int: ...


class IntegratedSource:
    """Every ``n`` consecutive frames of ``source`` summed or averaged into one (see module docstring)."""

    def __init__(self, source: _Source, n: int, mode: Mode = "sum") -> None:
        if n < 1:
            raise ValueError(f"integrate must be >= 1 frame, got {n}")
        if mode not in ("sum", "mean"):
            raise ValueError(f"integration mode must be 'sum' or 'mean', got {mode!r}")
        self.source, self.n, self.mode = source, n, mode

    @property
    def skipped(self) -> list[str]:
        return self.source.skipped

    def __len__(self) -> int:
        return -(-len(self.source) // self.n)

    def __iter__(self) -> Iterator[Frame]:
        group: list[Frame] = []
        index = 0
        for frame in self.source:
            group.append(frame)
            if len(group) == self.n:
                yield integrate(group, index, self.mode)
                group, index = [], index + 1
        if group:
            yield integrate(group, index, self.mode)


def integrate(frames: Iterable[Frame], index: int, mode: Mode = "sum") -> Frame:
    """One frame numbered ``index`` from ``frames`` (all the same shape), summed or averaged."""
    frames = list(frames)
    first, last = frames[0], frames[-1]
    if any(f.image.shape != first.image.shape for f in frames):
        shapes = sorted({f.image.shape for f in frames})
        raise SourceError(f"cannot integrate {first.origin} .. {last.origin}: frame shapes differ {shapes}")
    dtype = first.image.dtype
    total = np.zeros(first.image.shape, _sum_dtype(dtype, len(frames)) if mode == "sum" else np.float64)
    for frame in frames:
        np.add(total, frame.image, out=total)
    image = total if mode == "sum" else (total / len(frames)).astype(_mean_dtype(dtype))
    origin = first.origin if len(frames) == 1 else f"{first.origin} .. {last.origin} ({len(frames)} frames)"
    return replace(first, index=index, image=image, origin=origin)


def _sum_dtype(dtype: np.dtype, n: int) -> np.dtype:
    """The narrowest type holding ``n`` times the range of ``dtype``."""
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        wide = np.result_type(np.min_scalar_type(int(info.max) * n), np.min_scalar_type(int(info.min) * n))
        return wide if wide.kind != "O" else np.dtype(np.float64)  # beyond 64-bit integers
    return np.result_type(dtype, np.float32)  # float16 would overflow at 65504


def _mean_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype.itemsize <= 2 or dtype == np.float32 else np.dtype(np.float64)
