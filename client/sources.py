"""Where frames come from: microscope files on disk and the simulated microscope.

A source is an iterable of :class:`Frame` in acquisition order, each in its native dtype with a
timestamp and, when the file is calibrated, its pixel size. :func:`open_source` picks the source for a
path: one file (PNG, TIFF stack, DM3/DM4, EMD, MRC, MP4/AVI), a folder of image files, or a Gatan
in-situ folder tree. Unreadable files raise :class:`SourceError` naming the file; with
``on_error="skip"`` a source records the message in ``skipped`` and goes on instead.

Examples
--------
>>> from loopstream.core.simulator import SimulationConfig
>>> frames = list(SimulatorSource(SimulationConfig(shape=(64, 64), n_frames=3), seed=0))
>>> [f.index for f in frames], frames[0].image.dtype.name
([0, 1, 2], 'uint16')
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loopstream.client.formats import (
    MICROSCOPE_SUFFIXES,
    STILL_SUFFIXES,
    SUPPORTED_SUFFIXES,
    Plane,
    SourceError,
    read_images,
    read_planes,
)
from loopstream.client.integration import IntegratedSource
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig

__all__ = [
    "DirectorySource",
    "FileSource",
    "Frame",
    "InSituSource",
    "IntegratedSource",
    "SimulatorSource",
    "SourceError",
    "open_source",
    "read_images",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = STILL_SUFFIXES + MICROSCOPE_SUFFIXES  # one image or stack per file, so a folder of them
_INSITU_LEVELS = ("Hour", "Minute", "Second")


@dataclass(frozen=True)
class Frame:
    index: int
    timestamp_s: float  # since the first frame of the run
    image: np.ndarray  # 2-D, native dtype
    origin: str  # file (and page) or generator the frame came from
    pixel_size_nm: float | None = None  # from the file's calibration; None when it has none


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


class FileSource:
    """Every plane of the given files, in that order; the common ground of the file-based sources.

    Timestamps come from the files when they record acquisition times (DM, EMD, video frame rate),
    counted from the run's first frame; otherwise (or if that frame has none) frame index x
    ``frame_interval_s``.
    """

    def __init__(self, paths: Sequence[Path], frame_interval_s: float = 1.0, on_error: str = "stop") -> None:
        if on_error not in ("stop", "skip"):
            raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")
        self.paths = list(paths)
        self.frame_interval_s = frame_interval_s
        self.on_error = on_error
        self.skipped: list[str] = []

    def __len__(self) -> int:
        """The number of files: a progress total that counts a stack or a movie as one."""
        return len(self.paths)

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        first_time_s: float | None = None
        for path in self.paths:
            try:
                for plane in read_planes(path):
                    if index == 0:  # the run's first frame picks the clock, so time never runs backwards
                        first_time_s = plane.time_s
                    yield Frame(
                        index,
                        self._timestamp(plane, index, first_time_s),
                        plane.image,
                        plane.origin,
                        plane.pixel_size_nm,
                    )
                    index += 1
            except SourceError as exc:
                if self.on_error == "stop":
                    raise
                log.warning("skipping unreadable file: %s", exc)
                self.skipped.append(str(exc))

    def _timestamp(self, plane: Plane, index: int, first_time_s: float | None) -> float:
        if plane.time_s is None or first_time_s is None:
            return index * self.frame_interval_s
        return plane.time_s - first_time_s


class DirectorySource(FileSource):
    """Every image file (PNG, TIFF incl. stacks, DM3/DM4, EMD, MRC) in a folder, in name order."""

    def __init__(self, folder: Path, frame_interval_s: float = 1.0, on_error: str = "stop") -> None:
        if not folder.is_dir():
            raise SourceError(f"{folder} is not a directory of images")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SourceError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
        super().__init__(paths, frame_interval_s, on_error)


class InSituSource(FileSource):
    """A Gatan in-situ recording: ``Hour_xx/Minute_xx/Second_xx/*.dm4`` (or .dm3) frames.

    GMS writes one file per frame into a folder per second of the run; frames are ordered by hour,
    minute, second and then file name, all compared as numbers so ``Hour_100`` follows ``Hour_99``.
    """

    def __init__(self, root: Path, frame_interval_s: float = 1.0, on_error: str = "stop") -> None:
        if not is_insitu_tree(root):
            raise SourceError(f"{root} is not a Gatan in-situ folder (no Hour_xx sub-folders)")
        paths = sorted(
            (
                p
                for p in root.glob("Hour_*/Minute_*/Second_*/*")
                if p.suffix.lower() in (".dm3", ".dm4") and p.is_file()
            ),
            key=lambda p: _natural_key(p.relative_to(root).as_posix()),
        )
        if not paths:
            raise SourceError(f"{root} holds no Hour_xx/Minute_xx/Second_xx/*.dm4 (or .dm3) frames")
        super().__init__(paths, frame_interval_s, on_error)


def is_insitu_tree(folder: Path) -> bool:
    """Whether ``folder`` holds the Hour_xx sub-folders of a Gatan in-situ recording."""
    return folder.is_dir() and any(p.is_dir() and re.fullmatch(r"Hour_\d+", p.name) for p in folder.iterdir())


def open_source(
    path: Path,
    *,
    frame_interval_s: float = 1.0,
    on_error: str = "stop",
    integrate: int = 1,
) -> FileSource | IntegratedSource:
    """The source for ``path``, chosen by its suffix or folder layout.

    A file of a supported format gives its planes; a folder with ``Hour_xx`` sub-folders is a Gatan
    in-situ recording; any other folder gives its image files in name order. ``integrate`` > 1 sums
    averages that many consecutive frames into one (:mod:`loopstream.client.integration`).
    """
    if path.is_dir():
        source: FileSource = (
            InSituSource(path, frame_interval_s, on_error)
            if is_insitu_tree(path)
            else DirectorySource(path, frame_interval_s, on_error)
        )
    elif not path.exists():
        raise SourceError(f"{path} does not exist")
    elif path.suffix.lower() in SUPPORTED_SUFFIXES:
        source = FileSource([path], frame_interval_s, on_error)
    else:
        raise SourceError(
            f"{path}: unsupported format {path.suffix or '(no suffix)'!r}; supported files: "
            f"{', '.join(SUPPORTED_SUFFIXES)}, a folder of {'/'.join(IMAGE_SUFFIXES)} files, "
            "or a Gatan in-situ folder (Hour_xx/Minute_xx/Second_xx)"
        )
    return source if integrate == 1 else IntegratedSource(source, integrate)


def _natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)
