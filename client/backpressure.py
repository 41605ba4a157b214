"""What happens when analysis falls behind the camera: block, drop the oldest, or decimate.

A camera does not wait. ``block`` makes the acquisition loop wait for the in-flight window
(nothing is lost, the camera side must buffer); ``drop-oldest`` keeps a bounded buffer and drops
its oldest frame when a new one arrives to a full buffer (freshest data first, for live
steering); ``decimate`` sends at most ``target_fps`` frames per second of acquisition time.
Dropped and decimated frames are counted and listed, never silent.

Examples
--------
>>> sent = []
>>> gate = FrameGate(sent.append, BackpressurePolicy.DECIMATE, target_fps=5.0)
>>> from loopstream.client.sources import Frame
>>> for i in range(10):
...     gate.offer(Frame(i, i / 10.0, None, "camera"))
>>> gate.close()
>>> [f.index for f in sent], gate.skipped
([0, 2, 4, 6, 8], [1, 3, 5, 7, 9])
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from enum import Enum

from loopstream.client.sources import Frame


class BackpressurePolicy(str, Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop-oldest"
    DECIMATE = "decimate"


class FrameGate:
    """Between the camera loop (``offer``) and the inference stream (``submit``)."""

    def __init__(
        self,
        submit: Callable[[Frame], None],
        policy: BackpressurePolicy = BackpressurePolicy.BLOCK,
        buffer_frames: int = 16,
        target_fps: float | None = None,
    ) -> None:
        if policy is BackpressurePolicy.DECIMATE and not target_fps:
            raise ValueError("the decimate policy needs a target rate: set target_fps > 0")
        self.submit = submit
        self.policy = policy
        self.buffer_frames = buffer_frames
        self.min_interval_s = 1.0 / target_fps if target_fps else 0.0
        self.skipped: list[int] = []  # frame indices not analysed by this policy's choice
        self._next_due_s: float | None = None
        self._buffer: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._sender: threading.Thread | None = None
        if policy is BackpressurePolicy.DROP_OLDEST:
            self._sender = threading.Thread(target=self._send_buffered, name="frame-gate", daemon=True)
            self._sender.start()

    def offer(self, frame: Frame) -> None:
        if self.policy is BackpressurePolicy.BLOCK:
            self.submit(frame)
        elif self.policy is BackpressurePolicy.DECIMATE:
            if self._next_due_s is not None and frame.timestamp_s < self._next_due_s - 1e-9:
                self.skipped.append(frame.index)
                return
            self._next_due_s = frame.timestamp_s + self.min_interval_s
            self.submit(frame)
        else:
            with self._cond:
                if self._error is not None:
                    raise self._error
                if len(self._buffer) >= self.buffer_frames:
                    self.skipped.append(self._buffer.popleft().index)
                self._buffer.append(frame)
                self._cond.notify_all()

    def close(self) -> None:
        """Send what is still buffered, then stop."""
        if self._sender is None:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._sender.join()
        if self._error is not None:
            raise self._error

    def _send_buffered(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._closed:
                    self._cond.wait()
                if not self._buffer:
                    return
                frame = self._buffer.popleft()
            try:
                self.submit(frame)  # blocks on the in-flight window, outside the lock
            except BaseException as exc:  # surfaced to the camera loop at its next offer()
                with self._cond:
                    self._error = exc
                return
