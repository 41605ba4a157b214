"""Checks on everything a client sends: each problem is reported with what is wrong and what to do.

Every size is bounded here, once, to what the store (SQLite INTEGER / REAL), the proto and the
metrics can hold: frame indices, timestamps, frame sizes, loop counts, string lengths and every
numeric field of a loop (README "Limits").
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS

# Frame indices are stored as SQLite INTEGER; they also pass through float64 arrays on the way to
# the store and through JSON clients, both exact only up to 2**53.
MAX_FRAME_INDEX = 2**53 - 1
MAX_TIMESTAMP_S = 1e9  # ~32 years since the session's first frame
MAX_FRAME_SIDE_PX = 65_536
MAX_LOOPS_PER_FRAME = 100_000
MAX_LATENCY_S = 3600.0
MAX_ID_CHARS = 128  # session, microscope and model identifiers
MAX_TEXT_CHARS = 1024  # free text (the sample description)
# Identifiers become Prometheus labels and log fields: printable ASCII without spaces or quotes.
_ID = re.compile(r"[A-Za-z0-9._:/@+-]*")
MAX_ANGLE_DEG = 360.0

# Session parameters: physically meaningful ranges (a TEM pixel is 0.001 nm to 1 mm).
MAX_PIXEL_SIZE_NM = 1e6
MAX_FRAME_RATE_HZ = 1e6
MAX_DOSE_RATE = 1e20  # ions/cm^2/s
MAX_SEARCH_RANGE_NM = 1e6
MAX_SIZE_WEIGHT = 10.0  # beyond it size would outweigh position in the linking distance entirely
MAX_MEMORY_FRAMES = 1000


@dataclass(frozen=True)
class ShadowInput:
    """How a shadow candidate's detections of the frame agreed with the session's (client-computed)."""

    model_version: str
    candidate_loop_count: int
    matched: int
    f1: float
    latency_s: float


@dataclass(frozen=True)
class FrameInput:
    """One frame's detections as the domain sees them (wire-independent).

    ``loops`` is one ``(n, 11)`` float64 array in ``LOOP_COLUMNS`` order, the container a frame's
    loops keep from the decoded message to the SQL insert. A table with those columns (tests,
    benchmarks, ``loopstream.dev.synthetic``) is turned into that array here, once.
    """

    session_id: str
    frame_index: int
    timestamp_s: float
    model_name: str
    model_version: str
    width_px: int
    height_px: int
    loops: np.ndarray
    latency_s: float = 0.0  # client-measured inference latency; 0 = not measured
    shadow: ShadowInput | None = None  # None = not shadowed

    def __post_init__(self) -> None:
        loops = self.loops[LOOP_COLUMNS] if isinstance(self.loops, pd.DataFrame) else self.loops
        values = np.ascontiguousarray(loops, dtype=np.float64).reshape(-1, len(LOOP_COLUMNS))
        object.__setattr__(self, "loops", values)


def identifier_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the identifier ``name``, or None."""
    if len(value) > MAX_ID_CHARS:
        return (
            f"{name} has {len(value)} characters, more than the limit of {MAX_ID_CHARS}: use a shorter {name}"
        )
    if not _ID.fullmatch(value):
        return (
            f"{name} {value!r} has characters other than letters, digits and ._:/@+-: "
            f"use only those in {name}"
        )
    return None


def spec_problem(spec: dict) -> str | None:
    """The first thing wrong with a SessionSpec (as a dict of its set fields), or None."""
    for name in ("microscope_id", "model_name"):
        problem = identifier_problem(name, spec.get(name, ""))
        if problem:
            return problem
    sample = spec.get("sample", "")
    if len(sample) > MAX_TEXT_CHARS:
        return f"sample has {len(sample)} characters, more than the limit of {MAX_TEXT_CHARS}: shorten it"
    checks = [
        ("pixel_size_nm", "the size of one camera pixel in nm", 0.0, MAX_PIXEL_SIZE_NM, False),
        ("frame_rate_hz", "the nominal camera rate in Hz", 0.0, MAX_FRAME_RATE_HZ, False),
        ("dose_rate_ions_cm2_s", "ions/cm^2/s; 0 without irradiation", 0.0, MAX_DOSE_RATE, True),
        ("search_range_nm", "0 = the tracker's default", 0.0, MAX_SEARCH_RANGE_NM, True),
        ("size_weight", "px of linking distance per px of major axis; 0 = off", 0.0, MAX_SIZE_WEIGHT, True),
    ]
    for name, meaning, low, high, zero_ok in checks:
        value = spec.get(name, 0.0)
        if not (np.isfinite(value) and (low <= value if zero_ok else low < value) and value <= high):
            bound = ">=" if zero_ok else ">"
            return f"{name} = {value} must be {bound} {low:g} and <= {high:g}: set it to {meaning}"
    dpa = spec.get("dpa_per_ion_cm2", 0.0)
    if not (np.isfinite(dpa) and 0 <= dpa < 1e-10):
        return (
            f"dpa_per_ion_cm2 = {dpa} must be >= 0 and < 1e-10: the damage per unit fluence "
            "(dpa per ion/cm^2, from SRIM: displacements per ion per cm / atoms per cm^3); 0 = unknown"
        )
    memory = spec.get("memory_frames", 0)
    if memory > MAX_MEMORY_FRAMES:
        return (
            f"memory_frames = {memory} is more than {MAX_MEMORY_FRAMES}: frames a vanished loop is "
            "remembered; 0 = the tracker's default, < 0 = none"
        )
    return None


def frame_problem(frame: FrameInput) -> str | None:
    """The first thing wrong with ``frame`` as a sentence, or None if it can be stored.

    >>> frame = FrameInput("s", 0, 0.0, "m", "", 64, 64, np.array([[0.9, 5, 5, -3, 2, 0, 10, 0, 0, 4, 4]]))
    >>> print(frame_problem(frame))  # doctest: +NORMALIZE_WHITESPACE
    loop 0 has major_px = -3.0: it must be > 0 and <= 181.0 (twice the frame diagonal); fix the
    detector output and resend frame 0
    """
    for name, value in (
        ("session_id", frame.session_id),
        ("model_name", frame.model_name),
        ("model_version", frame.model_version),
    ):
        problem = identifier_problem(name, value)
        if problem:
            return problem
    if not 0 <= frame.frame_index <= MAX_FRAME_INDEX:
        return (
            f"frame_index {frame.frame_index} is outside 0..{MAX_FRAME_INDEX} (2^53 - 1): "
            "frame indices start at 0; number frames from 0 in each session"
        )
    resend = f"fix the detector output and resend frame {frame.frame_index}"
    if not (np.isfinite(frame.timestamp_s) and 0 <= frame.timestamp_s <= MAX_TIMESTAMP_S):
        return (
            f"timestamp_s = {frame.timestamp_s} must be finite, >= 0 and <= {MAX_TIMESTAMP_S:g} "
            f"(s since the session's first frame); {resend}"
        )
    if not (0 < frame.width_px <= MAX_FRAME_SIDE_PX and 0 < frame.height_px <= MAX_FRAME_SIDE_PX):
        return (
            f"frame size {frame.width_px} x {frame.height_px} px is not in 1..{MAX_FRAME_SIDE_PX}: set "
            "width_px and height_px to the analysed image size (needed for densities); "
            f"resend frame {frame.frame_index}"
        )
    if not (np.isfinite(frame.latency_s) and 0 <= frame.latency_s <= MAX_LATENCY_S):
        return (
            f"latency_s = {frame.latency_s} must be finite, >= 0 and <= {MAX_LATENCY_S:g} "
            f"(0 = not measured); {resend}"
        )
    if len(frame.loops) > MAX_LOOPS_PER_FRAME:
        return (
            f"frame {frame.frame_index} has {len(frame.loops)} loops, more than {MAX_LOOPS_PER_FRAME}: "
            "no TEM frame holds that many; check the detector's threshold"
        )
    shadow = frame.shadow
    if shadow is not None:
        problem = identifier_problem("shadow.model_version", shadow.model_version)
        if problem:
            return problem
        if not (
            shadow.model_version
            and 0 <= shadow.matched <= shadow.candidate_loop_count <= MAX_LOOPS_PER_FRAME
            and 0.0 <= shadow.f1 <= 1.0
            and np.isfinite(shadow.latency_s)
            and 0 <= shadow.latency_s <= MAX_LATENCY_S
        ):
            return (
                f"shadow agreement {shadow} is inconsistent: it needs the candidate's model_version, "
                f"0 <= matched <= candidate_loop_count <= {MAX_LOOPS_PER_FRAME}, 0 <= f1 <= 1 and "
                f"0 <= latency_s <= {MAX_LATENCY_S:g}; {resend}"
            )
    return _loop_problem(frame, resend)


def _loop_problem(frame: FrameInput, resend: str) -> str | None:
    """The first loop value that no detector could have found in this frame, as a sentence.

    An ellipse must overlap the frame (its centre at most half its major axis outside, its
    bounding box too), its axes and box sides be positive and at most twice the frame diagonal
    (minor <= major), its area within the frame's, its score a probability, its angle in degrees.
    """
    if not len(frame.loops):
        return None
    v = dict(zip(LOOP_COLUMNS, frame.loops.T, strict=True))  # column views of the one array
    w, h = float(frame.width_px), float(frame.height_px)
    longest = round(2 * float(np.hypot(w, h)), 1)
    half = np.clip(np.nan_to_num(v["major_px"]), 0, longest) / 2
    checks = [
        ("score", (v["score"] >= 0) & (v["score"] <= 1), "it must be a probability in [0, 1]"),
        (
            "major_px",
            (v["major_px"] > 0) & (v["major_px"] <= longest),
            f"it must be > 0 and <= {longest} (twice the frame diagonal)",
        ),
        (
            "minor_px",
            (v["minor_px"] > 0) & (v["minor_px"] <= v["major_px"]),
            "it must be > 0 and <= major_px",
        ),
        (
            "angle_deg",
            np.abs(v["angle_deg"]) <= MAX_ANGLE_DEG,
            f"it must be in degrees, within +-{MAX_ANGLE_DEG:g}",
        ),
        (
            "area_px",
            (v["area_px"] >= 0) & (v["area_px"] <= w * h),
            f"it must be >= 0 and <= the frame's {w * h:g} px",
        ),
        (
            "x_px",
            (v["x_px"] >= -half) & (v["x_px"] <= w + half),
            f"the ellipse must overlap the frame (0..{w:g} px)",
        ),
        (
            "y_px",
            (v["y_px"] >= -half) & (v["y_px"] <= h + half),
            f"the ellipse must overlap the frame (0..{h:g} px)",
        ),
        (
            "bbox_width_px",
            (v["bbox_width_px"] > 0) & (v["bbox_width_px"] <= longest),
            f"it must be > 0 and <= {longest}",
        ),
        (
            "bbox_height_px",
            (v["bbox_height_px"] > 0) & (v["bbox_height_px"] <= longest),
            f"it must be > 0 and <= {longest}",
        ),
        (
            "bbox_x_px",
            (v["bbox_x_px"] < w) & (v["bbox_x_px"] + v["bbox_width_px"] > 0),
            f"the box must overlap the frame (0..{w:g} px)",
        ),
        (
            "bbox_y_px",
            (v["bbox_y_px"] < h) & (v["bbox_y_px"] + v["bbox_height_px"] > 0),
            f"the box must overlap the frame (0..{h:g} px)",
        ),
    ]
    finite = np.isfinite(frame.loops)[:, [LOOP_COLUMNS.index(column) for column, _, _ in checks]]
    passed = np.column_stack([ok for _, ok, _ in checks]) & finite
    if passed.all():
        return None  # the usual case, decided in one pass
    for (column, _, rule), good in zip(checks, passed.T, strict=True):
        bad = ~good
        if bad.any():
            row = int(np.argmax(bad))
            return f"loop {row} has {column} = {v[column][row]}: {rule}; {resend}"
    return None


def content_hash(frame: FrameInput) -> bytes:
    """SHA-256 of what a frame stores (time, size, model, loops): a resend must match it exactly."""
    digest = hashlib.sha256()
    digest.update(struct.pack("<dii", frame.timestamp_s, frame.width_px, frame.height_px))
    for text in (frame.model_name, frame.model_version):
        digest.update(text.encode() + b"\0")
    digest.update(np.ascontiguousarray(frame.loops, dtype="<f8").tobytes())
    return digest.digest()
