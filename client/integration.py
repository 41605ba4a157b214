"""Integration of consecutive frames: fewer, less noisy frames from a fast in-situ camera.

A camera at 40-400 frames/s gives frames too noisy (and too many) to analyse one by one; averaging
``n`` consecutive frames trades time resolution for signal. The mean keeps the camera's dtype
(integer counts rounded to the nearest count), so an integrated frame is exactly as analysable as a
raw one: the pipeline standardises every frame anyway, and a widened sum (uint32) would not be.
An integrated frame takes the timestamp and pixel size of its first frame; a run whose length is not a
multiple of ``n`` ends with a frame integrated from fewer, so no frame is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from loopstream.client.formats import SourceError

if TYPE_CHECKING:  # sources imports this module to build integrated sources
    from loopstream.client.sources import Frame


class _Source(Protocol):
    skipped: list[str]

    def __iter__(self) -> Iterator[Frame]: ...

    def __len__(self) -> int: ...


class IntegratedSource:
    """Every ``n`` consecutive frames of ``source`` averaged into one (see module docstring)."""

    def __init__(self, source: _Source, n: int) -> None:
        if n < 1:
            raise ValueError(f"integrate must be >= 1 frame, got {n}")
        self.source, self.n = source, n

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
                yield integrate(group, index)
                group, index = [], index + 1
        if group:
            yield integrate(group, index)


def integrate(frames: Iterable[Frame], index: int) -> Frame:
    """One frame numbered ``index``: the mean of ``frames`` (all the same shape), in their dtype."""
    frames = list(frames)
    first, last = frames[0], frames[-1]
    if any(f.image.shape != first.image.shape for f in frames):
        shapes = sorted({f.image.shape for f in frames})
        raise SourceError(f"cannot integrate {first.origin} .. {last.origin}: frame shapes differ {shapes}")
    dtype = first.image.dtype
    total = np.zeros(first.image.shape, np.float64)
    for frame in frames:
        np.add(total, frame.image, out=total)
    mean = total / len(frames)
    image = (
        np.rint(mean).astype(dtype) if dtype.kind in "ui" else mean.astype(np.result_type(dtype, np.float32))
    )
    origin = first.origin if len(frames) == 1 else f"{first.origin} .. {last.origin} ({len(frames)} frames)"
    return replace(first, index=index, image=image, origin=origin)
