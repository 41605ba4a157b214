"""The waiting rule shared by the client's two streams (frames to Triton, detections to the tracker).

Both keep what is unanswered, mark themselves broken from their reader thread when the stream
fails, and are reopened by whichever caller is waiting at the time, under the stream's lock, so
exactly one thread reconnects and resends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

POLL_S = 0.5  # how often a waiter looks again even without a notify


class ReconnectingStream:
    """Base of a stream with a condition ``_cond`` and a ``_broken`` reason (None while healthy)."""

    _cond: threading.Condition
    _broken: str | None

    def _reconnect_locked(self) -> None:
        """Reopen the stream and resend what is unanswered; called with ``_cond`` held."""
        raise NotImplementedError

    def _wait_locked(self, busy: Callable[[], bool]) -> None:
        """With ``_cond`` held: wait while ``busy()``, reopening the stream whenever it broke."""
        while busy():
            if self._broken:
                self._reconnect_locked()
                continue
            self._cond.wait(POLL_S)
