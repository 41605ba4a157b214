"""The reconnect rule shared by the client's two streams (frames to Triton, detections to the tracker).

Both keep what is unanswered. When a stream ends in any way the client did not ask for (an error
status, or a server that simply finishes it, as a tracker stopping gracefully does), its reader
reports the break and a background thread reopens it with exponential backoff as soon as the
server is back, then resends everything unanswered. Callers never reconnect themselves: they only
wait (for room in a window, for the last answers), so a camera loop that never waits still gets
its stream back within a backoff step of the server's return. If the server does not come back
within ``reconnect_timeout_s`` the stream fails, and every waiter gets that error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiter looks again even without a notify
BACKOFF_FIRST_S = 0.1  # first pause between reconnect attempts; doubles up to BACKOFF_MAX_S
BACKOFF_MAX_S = 2.0


class ReconnectingStream:
    """Base of a stream reopened in the background whenever it ends unasked.

    Subclasses set ``_cond`` (a Condition guarding their state), ``reconnect_timeout_s``, ``server``
    (a name for messages), call ``_init_reconnecting()``, report breaks with ``_stream_broke``,
    and implement the three hooks below.
    """

    _cond: threading.Condition
    reconnect_timeout_s: float
    server: str

    def _init_reconnecting(self) -> None:
        self.reconnects = 0
        self._generation = 0  # bumped per reopen: late news from an old stream is ignored
        self._broken: str | None = None  # why the current stream ended; None while it is healthy
        self._failure: Exception | None = None  # set once the stream cannot be reopened: final

    # -- hooks ------------------------------------------------------------------------------

    def _discard_stream(self) -> None:
        """Close the broken stream (called without ``_cond``: it may join the stream's reader)."""
        raise NotImplementedError

    def _server_ready(self) -> bool:
        """One quick attempt to see whether the server takes a new stream (called without ``_cond``)."""
        raise NotImplementedError

    def _reopen_locked(self) -> None:
        """Open a new stream and resend everything unanswered (called with ``_cond`` held)."""
        raise NotImplementedError

    def _unanswered(self) -> int:
        raise NotImplementedError

    # -- the mechanism ----------------------------------------------------------------------

    def _stream_broke(self, reason: str, generation: int, final: Exception | None = None) -> None:
        """With ``_cond`` held, from a stream's reader: the stream of ``generation`` ended unasked.

        The first report of the current stream starts the background reconnect; ``final`` instead
        fails the stream for good (e.g. a refused token: reconnecting cannot help).
        """
        if generation != self._generation or self._failure is not None:
            return
        if final is not None:
            self._failure = final
        elif self._broken is None:
            log.warning("%s stream ended (%s); reconnecting in the background", self.server, reason)
            self._broken = reason
            threading.Thread(target=self._reconnect, name=f"reconnect-{self.server}", daemon=True).start()
        self._cond.notify_all()

    def _reconnect(self) -> None:
        """Background: wait for the server with backoff, then reopen and resend."""
        self._discard_stream()
        deadline = time.monotonic() + self.reconnect_timeout_s
        pause = BACKOFF_FIRST_S
        while not self._server_ready():
            if time.monotonic() + pause > deadline:
                with self._cond:
                    self._failure = ConnectionError(
                        f"{self.server} did not come back within {self.reconnect_timeout_s:.0f} s "
                        f"(the stream ended: {self._broken}); {self._unanswered()} frames are unanswered; "
                        "check the server and run again"
                    )
                    self._cond.notify_all()
                return
            time.sleep(pause)
            pause = min(2 * pause, BACKOFF_MAX_S)
        with self._cond:
            self._generation += 1
            self._broken = None
            self.reconnects += 1
            log.info("reconnected to %s; resending %d unanswered frames", self.server, self._unanswered())
            try:
                self._reopen_locked()
            except Exception as exc:  # e.g. the server went away again at once: wait once more
                self._stream_broke(f"reopening failed: {exc}", self._generation)
            self._cond.notify_all()

    def raise_if_failed(self) -> None:
        """Raise the error that ended the stream for good, if any (it could not be reopened)."""
        if self._failure is not None:
            raise self._failure

    def _wait_locked(self, busy: Callable[[], bool]) -> None:
        """With ``_cond`` held: wait while ``busy()``; raise if the stream cannot be reopened."""
        while busy():
            self.raise_if_failed()
            self._cond.wait(POLL_S)
