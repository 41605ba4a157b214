"""Decoding one microscope file into 2-D planes, with when each was acquired and its pixel size.

The formats are decoded by their maintained libraries (tifffile and OpenCV for PNG/TIFF, rosettasciio
for Gatan DM3/DM4, Velox/Berkeley EMD and MRC, imageio with PyAV for MP4/AVI); this module only maps
each library's output onto :class:`Plane` and turns every failure into a :class:`SourceError` that
names the file, so a run over thousands of files can say which one to look at.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import imageio.v3 as iio
import numpy as np
import tifffile

log = logging.getLogger(__name__)

STILL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MICROSCOPE_SUFFIXES = (".dm3", ".dm4", ".emd", ".mrc")  # read with rosettasciio
VIDEO_SUFFIXES = (".mp4", ".avi")
SUPPORTED_SUFFIXES = STILL_SUFFIXES + MICROSCOPE_SUFFIXES + VIDEO_SUFFIXES

_RSCIIO_PLUGINS = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".emd": "emd", ".mrc": "mrc"}
# Units as rosettasciio writes them (pint's short forms; DM files use either micro sign).
_NM_PER_UNIT = {
    "m": 1e9,
    "mm": 1e6,
    "µm": 1e3,
    "μm": 1e3,
    "um": 1e3,
    "nm": 1.0,
    "Å": 0.1,
    "A": 0.1,
    "pm": 1e-3,
}
_S_PER_UNIT = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}
_FILETIME_TICKS_PER_S = 10_000_000  # DM's "Acquisition Time (OS)" is a Windows FILETIME: 100 ns ticks


class SourceError(RuntimeError):
    """A frame that could not be read; the message names the file and the cause."""


@dataclass(frozen=True)
class Plane:
    """One 2-D image of a file, before the source numbers it within the run."""

    image: np.ndarray  # 2-D, the file's own dtype (video: greyscale uint8)
    time_s: float | None  # acquisition time on the file's clock, None when the file does not record one
    pixel_size_nm: float | None  # None when the file carries no spatial calibration
    origin: str  # file, and [plane] when the file holds several


def read_planes(path: Path) -> Iterator[Plane]:
    """The planes of one file in acquisition order, chosen by suffix; failures raise SourceError.

    Video is decoded lazily (a movie need not fit in memory), so its error can come after some planes.
    """
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        planes: Iterator[Plane] = _video_planes(path)
    elif suffix in MICROSCOPE_SUFFIXES:
        planes = _microscope_planes(path)
    elif suffix in STILL_SUFFIXES:
        planes = _still_planes(path)
    else:
        raise SourceError(
            f"{path}: unsupported format {suffix!r}; supported: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    try:
        yield from planes
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(
            f"cannot read {path}: {type(exc).__name__}: {exc}; check that the file is complete "
            f"(not cut short or still being written) and really a {suffix} file"
        ) from exc


def read_images(path: Path) -> list[np.ndarray]:
    """The greyscale image(s) of one PNG, JPEG or TIFF file (a TIFF stack gives one per page)."""
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


def _still_planes(path: Path) -> Iterator[Plane]:
    images = read_images(path)
    for page, image in enumerate(images):
        yield Plane(image, None, None, str(path) if len(images) == 1 else f"{path}[{page}]")


def _microscope_planes(path: Path) -> Iterator[Plane]:
    """Planes of a DM3/DM4, EMD or MRC file: a 3-D (or deeper) stack gives one plane per 2-D slice."""
    plugin = importlib.import_module(f"rsciio.{_RSCIIO_PLUGINS[path.suffix.lower()]}")
    images = [s for s in plugin.file_reader(str(path)) if _is_image(s)]
    if not images:
        raise SourceError(f"{path} holds no image (only spectra or an empty dataset); nothing to analyse")
    if len(images) > 1:  # e.g. a Velox file with HAADF and BF: streaming both would interleave detectors
        log.warning("%s holds %d images; streaming only the first", path, len(images))
    signal = images[0]
    data = np.asarray(signal["data"])
    stack = data.reshape(-1, *data.shape[-2:])
    axes = signal["axes"]
    nm_per_unit = _unit_factor(axes[-1], _NM_PER_UNIT)
    pixel_size_nm = None if nm_per_unit is None else axes[-1]["scale"] * nm_per_unit
    s_per_unit = _unit_factor(axes[0], _S_PER_UNIT) if len(axes) == 3 else None
    start_s = _acquisition_time_s(signal["original_metadata"])
    for page, image in enumerate(stack):
        if s_per_unit is not None:
            time_s = (start_s or 0.0) + (axes[0].get("offset", 0.0) + page * axes[0]["scale"]) * s_per_unit
        else:
            time_s = start_s if len(stack) == 1 else None  # one time for many planes says nothing per plane
        yield Plane(image, time_s, pixel_size_nm, str(path) if len(stack) == 1 else f"{path}[{page}]")


def _is_image(signal: dict[str, Any]) -> bool:
    axes = signal["axes"]
    return len(axes) >= 2 and not axes[-1].get("navigate", False) and not axes[-2].get("navigate", False)


def _unit_factor(axis: dict[str, Any], per_unit: dict[str, float]) -> float | None:
    """How many nm (or s) one unit of a calibrated axis is; None if uncalibrated or of another kind."""
    factor = per_unit.get(str(axis.get("units") or "").strip())
    return factor if factor is not None and float(axis.get("scale", 0.0)) > 0 else None


def _acquisition_time_s(metadata: dict[str, Any]) -> float | None:
    """When the file was acquired, in seconds on its own clock (DM: FILETIME, Velox: Unix time)."""
    dm_tags = metadata.get("ImageList", {}).get("TagGroup0", {}).get("ImageTags", {})
    filetime = dm_tags.get("DataBar", {}).get("Acquisition Time (OS)")
    if filetime is not None:
        return float(filetime) / _FILETIME_TICKS_PER_S
    velox = metadata.get("Acquisition", {}).get("AcquisitionStartDatetime", {}).get("DateTime")
    return float(velox) if velox is not None else None


def _video_planes(path: Path) -> Iterator[Plane]:
    """Greyscale (luma) uint8 frames; times from the frame rate, as a video has no per-frame clock."""
    fps = float(iio.immeta(path, plugin="pyav")["fps"])
    with av.open(str(path)) as container:
        declared = container.streams.video[0].frames  # 0 when the container does not say
    count = 0
    for count, image in enumerate(iio.imiter(path, plugin="pyav", format="gray"), start=1):
        yield Plane(image, (count - 1) / fps, None, f"{path}[{count - 1}]")
    if count < declared:  # an AVI cut at a frame boundary decodes cleanly but short
        raise SourceError(
            f"{path} ends after {count} of its {declared} frames; the file is truncated, copy it again"
        )
