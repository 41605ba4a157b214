"""Session records: opened with the pipeline and A/B arm they run, read with their progress, listed.

What a session *is* lives here; what happens to its frames is ``ingest``, what is read back about
them is ``queries``. Records are plain dicts of the stored columns (``store.SESSION_COLUMNS``)
plus ``frames_stored`` and ``last_frame_index``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from loopstream.tracker.rollout import Assignment
from loopstream.tracker.store import Store
from loopstream.tracker.validation import spec_problem

log = logging.getLogger("loopstream.tracker")


class SessionNotFound(KeyError):
    def __str__(self) -> str:
        shown = (
            self.args[0] if len(self.args[0]) <= 64 else f"{self.args[0][:64]}... ({len(self.args[0])} chars)"
        )
        return (
            f"unknown session_id {shown!r}: open a session with OpenSession and use the "
            "session_id it returns (ListSessions shows the open ones)"
        )


@dataclass(frozen=True)
class Defaults:
    model_name: str = "loops_semantic"  # for sessions that name no model family
    model_version: str = ""  # "" = Triton's latest
    search_range_nm: float = 8.0
    memory_frames: int = 8  # bridges a loop missed up to 8 frames running (recall ~75 %: 4e-6 odds)
    # The pipeline of each SessionSpec.model_family (1 instance: bright field; 2 semantic: dark field).
    family_models: tuple[tuple[int, str], ...] = ((1, "loops_instance"), (2, "loops_semantic"))


class SessionCatalog:
    """Opens, reads and lists the sessions of one store."""

    def __init__(self, store: Store, defaults: Defaults, assign: Callable[[str], Assignment] | None) -> None:
        self.store = store
        self.defaults = defaults
        self.assign = assign  # session id -> its arm (and shadow), e.g. from an A/B policy

    def open(self, spec: dict) -> dict:
        """Store a new session. ``spec`` has the SessionSpec fields; returns the session record."""
        problem = spec_problem(spec)
        if problem:
            raise ValueError(problem)
        d = self.defaults
        memory = spec.get("memory_frames", 0)
        session_id = str(uuid.uuid4())
        arm = self._assignment(session_id, int(spec.get("model_family", 0)), spec.get("model_name", ""))
        session = {
            "session_id": session_id,
            "microscope_id": spec.get("microscope_id", ""),
            "sample": spec.get("sample", ""),
            "pixel_size_nm": float(spec["pixel_size_nm"]),
            "frame_rate_hz": float(spec["frame_rate_hz"]),
            "dose_rate_ions_cm2_s": float(spec.get("dose_rate_ions_cm2_s", 0.0)),
            "dpa_per_ion_cm2": float(spec.get("dpa_per_ion_cm2", 0.0)),
            "model_family": int(spec.get("model_family", 0)),
            "model_name": arm.model_name,
            "model_version": arm.model_version,  # the arm; "" (latest) becomes the client's pin at frame 1
            "search_range_nm": float(spec.get("search_range_nm") or d.search_range_nm),
            "memory_frames": d.memory_frames if memory == 0 else max(int(memory), 0),
            "size_weight": float(spec.get("size_weight", 0.0)),
            "opened_at_unix_s": time.time(),
            "closed": 0,
            "shadow_model_version": arm.shadow_version,
            "shadow_fraction": arm.shadow_fraction,
        }
        self.store.add_session(session)
        log.info(
            "session opened", extra={k: session[k] for k in ("session_id", "microscope_id", "model_version")}
        )
        return self.get(session["session_id"])

    def _assignment(self, session_id: str, family: int, named: str = "") -> Assignment:
        """The pipeline (and A/B arm) of a new session: the one it names, else the family's, at the
        arm the policy assigns when the policy is about that pipeline, else at its latest version."""
        d = self.defaults
        default = Assignment(d.model_name, d.model_version)
        arm = self.assign(session_id) if self.assign else default
        pipeline = named or dict(d.family_models).get(family)
        if pipeline is None or pipeline == arm.model_name:
            return arm
        return default if pipeline == d.model_name else Assignment(pipeline, "")

    def get(self, session_id: str) -> dict:
        """The session record with its progress (frames_stored, last_frame_index)."""
        record = self.store.session(session_id)
        if record is None:
            raise SessionNotFound(session_id)
        progress = self.store.progress(session_id)
        return {
            **record,
            "frames_stored": progress.frames_stored,
            "last_frame_index": progress.last_frame_index,
        }

    def list(self, include_closed: bool) -> list[dict]:
        return [self.get(s) for s in self.store.sessions(include_closed).session_id]

    def count_open(self) -> int:
        return len(self.store.sessions(include_closed=False))
