"""Where frames come from: files on disk and the simulated microscope.

A source is an iterable of :class:`Frame` in acquisition order, each in its native dtype with a
timestamp. Unreadable files raise :class:`SourceError` naming the file; with ``on_error="skip"``
a source reports the file and goes on instead.

Examples
--------
>>> from loopstream.simulator import SimulationConfig
>>> frames = list(SimulatorSource(SimulationConfig(shape=(64, 64), n_frames=3), seed=0))
>>> [f.index for f in frames], frames[0].image.dtype.name
([0, 1, 2], 'uint16')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tifffile

from loopstream.simulator import SimulatedMicroscope, SimulationConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


class SourceError(RuntimeError):
    """A frame that could not be read; the message names the file and the cause."""


@dataclass(frozen=True)
class Frame:
    index: int
    timestamp_s: float  # since the first frame of the run
    image: np.ndarray  # 2-D, native dtype
    origin: str  # file (and page) or generator the frame came from


class SimulatorSource:
    """Frames of a simulated in-situ experiment, optionally replayed in real time at ``fps``."""

    def __init__(
        self, config: SimulationConfig, seed: int = 0, n_frames: int | None = None, fps: float = 0.0
    ) -> None:
        self.microscope = SimulatedMicroscope(config, seed)
        self.n_frames = config.n_frames if n_frames is None else n_frames
        self.fps = fps

    @property
    def pixel_size_nm(self) -> float:
        return self.microscope.config.pixel_size_nm

    def __len__(self) -> int:
        return self.n_frames

    def __iter__(self) -> Iterator[Frame]:
        start = time.monotonic()
        for index in range(self.n_frames):
            if self.fps > 0:  # a camera does not wait for us: pace by the clock, not by the consumer
                time.sleep(max(0.0, start + index / self.fps - time.monotonic()))
            image = self.microscope.render(index)
            yield Frame(index, index / self.microscope.config.frame_rate_hz, image, f"simulator:{index}")


class DirectorySource:
    """Every PNG / TIFF image (and every page of a TIFF stack) in a folder, in name order."""

    def __init__(self, folder: Path, frame_interval_s: float = 1.0, on_error: str = "stop") -> None:
        if not folder.is_dir():
            raise SourceError(f"{folder} is not a directory of images")
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        self.frame_interval_s = frame_interval_s
        self.on_error = on_error
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for path in self.paths:
            try:
                images = read_images(path)
            except SourceError as exc:
                if self.on_error == "stop":
                    raise
                log.warning("skipping unreadable file: %s", exc)
                self.skipped.append(str(exc))
                continue
            for page, image in enumerate(images):
                origin = str(path) if len(images) == 1 else f"{path}[{page}]"
                yield Frame(index, index * self.frame_interval_s, image, origin)
                index += 1


def read_images(path: Path) -> list[np.ndarray]:
    """The greyscale image(s) of one PNG or TIFF file (a TIFF stack gives one per page)."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            data = tifffile.imread(path)
            images = [data] if data.ndim == 2 else list(data.reshape(-1, *data.shape[-2:]))
        else:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError("OpenCV could not decode it")
            images = [image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)]
    except Exception as exc:
        raise SourceError(f"cannot read {path}: {exc}; check that the file is complete and an image") from exc
    return images
