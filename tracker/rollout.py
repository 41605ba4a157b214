"""A/B rollout of pipeline versions: which version (arm) a new session gets, and which frames shadow.

The policy is the JSON file the Helm chart mounts from a ConfigMap (``ab-policy.json``)::

    {"pipeline": "loops_semantic", "arms": {"1": 0.9, "2": 0.1},
     "shadow": {"version": "2", "fraction": 0.05}}

``arms`` maps Triton model versions to shares of new sessions (summing to 1); ``shadow``
(optional) also sends that fraction of every session's frames to a candidate version, only to
measure agreement. A session's arm is drawn from its id alone, so a retried OpenSession gets the
same answer; the tracker stores the arm with the session, so later policy changes (promote,
rollback, new weights) only steer sessions opened after them.

>>> policy = RolloutPolicy.from_json('{"pipeline": "loops_semantic", "arms": {"1": 0.9, "2": 0.1}}')
>>> assign_arm(policy, "session-42") in {"1", "2"}
True
>>> promote(policy, "2").arms
{'2': 1.0}
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopstream.core.detections import shadows_frame, uniform

log = logging.getLogger("loopstream.tracker.rollout")

WEIGHT_TOLERANCE = 1e-6
_POLICY_KEYS = {"pipeline", "arms", "shadow"}
_SHADOW_KEYS = {"version", "fraction"}


@dataclass(frozen=True)
class Shadow:
    """A candidate version that also analyses ``fraction`` of each session's frames, results unused."""

    version: str
    fraction: float


@dataclass(frozen=True)
class RolloutPolicy:
    """A validated A/B policy; build it with the constructor or :meth:`from_json` (both validate)."""

    pipeline: str
    arms: dict[str, float] = field(hash=False)
    shadow: Shadow | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, str) or not self.pipeline:
            raise ValueError('"pipeline" must name the Triton model sessions use, e.g. "loops_semantic"')
        if not isinstance(self.arms, dict) or not self.arms:
            raise ValueError('"arms" must map model versions to weights, e.g. {"1": 0.9, "2": 0.1}')
        for version, weight in self.arms.items():
            _check_version(version, "arms")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
                raise ValueError(f'weight of version "{version}" is {weight!r}: weights must be numbers >= 0')
        total = sum(self.arms.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(f"weights sum to {total:.9g}, not 1: {self.arms}")
        # Canonical form: float weights in numeric version order, so equal policies compare equal.
        ordered = {v: float(self.arms[v]) for v in sorted(self.arms, key=int)}
        object.__setattr__(self, "arms", ordered)
        if self.shadow is not None:
            _check_version(self.shadow.version, "shadow")
            fraction = self.shadow.fraction
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
                raise ValueError(f"shadow fraction is {fraction!r}: it must be in (0, 1]")

    @classmethod
    def from_dict(cls, doc: Any) -> RolloutPolicy:
        """Parse a decoded policy document; unknown keys are errors (a typo must not pass silently)."""
        if not isinstance(doc, dict):
            raise ValueError(f"a policy is a JSON object, not {type(doc).__name__}")
        _reject_unknown(doc, _POLICY_KEYS, "policy")
        shadow = doc.get("shadow")
        if shadow is not None:
            if not isinstance(shadow, dict) or set(shadow) != _SHADOW_KEYS:
                raise ValueError('"shadow" must be {"version": "<v>", "fraction": <0..1>}')
            shadow = Shadow(str(shadow["version"]), shadow["fraction"])
        return cls(doc.get("pipeline", ""), doc.get("arms", {}), shadow)  # validated there

    @classmethod
    def from_json(cls, text: str) -> RolloutPolicy:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from exc
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"pipeline": self.pipeline, "arms": dict(self.arms)}
        if self.shadow is not None:
            doc["shadow"] = {"version": self.shadow.version, "fraction": self.shadow.fraction}
        return doc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def control(self) -> str:
        """The arm most sessions get (lowest version on a tie): the baseline comparisons refer to."""
        return max(self.arms, key=lambda v: (self.arms[v], -int(v)))

    @property
    def versions(self) -> list[str]:
        """Every version the pool must serve for this policy: weighted arms and the shadow."""
        served = {v for v, w in self.arms.items() if w > 0}
        if self.shadow is not None:
            served.add(self.shadow.version)
        return sorted(served, key=int)


def _check_version(version: Any, where: str) -> None:
    if not isinstance(version, str) or not version.isdigit() or int(version) < 1:
        raise ValueError(f'{where}: version {version!r} is not a Triton model version ("1", "2", ...)')


def _reject_unknown(doc: dict, allowed: set[str], what: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class Assignment:
    """What a new session runs, fixed for its life: its arm and, if any, the candidate it shadows."""

    model_name: str
    model_version: str
    shadow_version: str = ""  # "" = no shadow
    shadow_fraction: float = 0.0


def assign_arm(policy: RolloutPolicy, session_id: str) -> str:
    """The version a new session gets: its id's draw placed on the cumulative weights."""
    u = uniform(session_id)
    cumulative = 0.0
    for version, weight in policy.arms.items():
        cumulative += weight
        if u < cumulative:
            return version
    return next(v for v in reversed(policy.arms) if policy.arms[v] > 0)  # rounding left u above the sum


def assign(policy: RolloutPolicy, session_id: str) -> Assignment:
    """A new session's arm, and the shadow unless the session is itself on the candidate."""
    arm = assign_arm(policy, session_id)
    shadow = policy.shadow
    if shadow is None or shadow.version == arm:
        return Assignment(policy.pipeline, arm)
    return Assignment(policy.pipeline, arm, shadow.version, float(shadow.fraction))


def shadow_version(policy: RolloutPolicy, session_arm: str, session_id: str, frame_index: int) -> str | None:
    """The candidate version this frame must also go to, or None.

    A session already on the candidate has nothing to compare with, so it never shadows.
    """
    shadow = policy.shadow
    if shadow is None or shadow.version == session_arm:
        return None
    return shadow.version if shadows_frame(session_id, frame_index, shadow.fraction) else None


def with_weights(policy: RolloutPolicy, arms: dict[str, float]) -> RolloutPolicy:
    """The policy with new arm weights (validated); the shadow stays unless its version now takes all."""
    return RolloutPolicy(policy.pipeline, arms, _shadow_unless_sole(policy.shadow, arms))


def promote(policy: RolloutPolicy, version: str) -> RolloutPolicy:
    """Every new session on ``version``; a shadow of that same version has nothing left to compare."""
    return with_weights(policy, {version: 1.0})


def rollback(policy: RolloutPolicy, to_version: str) -> RolloutPolicy:
    """Every new session back on ``to_version``, and no shadow: the candidate stops costing compute."""
    return RolloutPolicy(policy.pipeline, {to_version: 1.0})


def _shadow_unless_sole(shadow: Shadow | None, arms: dict[str, float]) -> Shadow | None:
    if shadow is not None and arms.get(shadow.version, 0.0) >= 1.0:
        return None
    return shadow


class PolicyFile:
    """The policy in a JSON file, re-read when the file changes; a bad edit keeps the last good policy.

    Change detection is a ``stat`` per call (cheap next to opening a session): the resolved path,
    inode, size and mtime. A Kubernetes ConfigMap volume updates by swapping the ``..data``
    symlink to a new directory, which changes the resolved path and the inode, never the file
    in place, so the tracker sees an edit as soon as the kubelet syncs it.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        stamp = self._stamp()
        self._policy = RolloutPolicy.from_json(self.path.read_text())  # a bad file at start-up is fatal
        self._seen = stamp
        self.loaded_at_unix_s = time.time()  # when the policy in force was read

    def _stamp(self) -> tuple:
        st = os.stat(self.path)  # follows symlinks: the file the link points at now
        return os.path.realpath(self.path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def current(self) -> RolloutPolicy:
        """The policy in force: the file's, if it changed and is valid, else the last valid one."""
        with self._lock:
            try:
                stamp = self._stamp()
                if stamp != self._seen:
                    self._seen = stamp  # a bad file is reported once, not on every call
                    policy = RolloutPolicy.from_json(self.path.read_text())
                    if policy != self._policy:
                        log.info("A/B policy reloaded from %s: %s", self.path, policy.to_dict())
                        self.loaded_at_unix_s = time.time()
                    self._policy = policy
            except (OSError, ValueError) as exc:
                log.error("A/B policy in %s rejected, keeping %s: %s", self.path, self._policy.to_dict(), exc)
            return self._policy

    def assign(self, session_id: str) -> Assignment:
        """A new session's assignment under the policy in force: the tracker engine's ``assign`` hook."""
        return assign(self.current(), session_id)


def write_policy(path: Path | str, policy: RolloutPolicy) -> None:
    """Replace the policy file atomically, so a reader never sees half a file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(policy.to_json())
    os.replace(temporary, path)
