"""Detections to the tracker over one gRPC stream, acknowledged after durable storage.

The tracker acknowledges each frame once it is committed, and storing a frame again is a no-op
there, so the rule here is simple: keep every unacknowledged frame, and after a broken stream
(tracker restarted) reconnect and send them all again. Nothing accepted is lost or doubled.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

import grpc

from loopstream.client.reconnecting import ReconnectingStream
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END = object()


def open_channel(url: str, root_certificate: bytes | None = None) -> grpc.Channel:
    if root_certificate is None:
        return grpc.insecure_channel(url)
    return grpc.secure_channel(url, grpc.ssl_channel_credentials(root_certificates=root_certificate))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class DetectionStream(ReconnectingStream):
    """Sends FrameDetections of one session and tracks their acknowledgements."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        on_ack: Callable[[pb.Ack], None] | None = None,
        reconnect_timeout_s: float = 120.0,
        root_certificate: bytes | None = None,
    ) -> None:
        self.url = url
        self.metadata = auth_metadata(token)
        self.on_ack = on_ack or (lambda ack: None)
        self.reconnect_timeout_s = reconnect_timeout_s
        self.root_certificate = root_certificate
        self.reconnects = 0
        self.rejected: list[pb.Ack] = []
        self._unacked: OrderedDict[int, pb.FrameDetections] = OrderedDict()
        self._cond = threading.Condition()
        self._broken: str | None = None
        self._open()

    def send(self, message: pb.FrameDetections) -> None:
        with self._cond:
            self._unacked[message.frame_index] = message
            self._outbox.put(message)

    def drain(self) -> None:
        """Wait for an acknowledgement of every frame sent, resending after reconnects."""
        with self._cond:
            self._wait_locked(lambda: bool(self._unacked))

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._outbox.put(_END)
            self._reader.join(10)
            self._channel.close()

    def _open(self) -> None:
        self._channel = open_channel(self.url, self.root_certificate)
        self._outbox: queue.Queue = queue.Queue()
        stub = pb_grpc.TrackerStub(self._channel)
        responses = stub.StreamDetections(self._requests(self._outbox), metadata=self.metadata)
        self._reader = threading.Thread(target=self._read_acks, args=(responses,), daemon=True)
        self._reader.start()

    @staticmethod
    def _requests(outbox: queue.Queue) -> Iterator[pb.FrameDetections]:
        while (message := outbox.get()) is not _END:
            yield message

    def _read_acks(self, responses: Iterator[pb.Ack]) -> None:
        try:
            for ack in responses:
                with self._cond:
                    self._unacked.pop(ack.frame_index, None)
                    if not ack.accepted:
                        self.rejected.append(ack)
                    self._cond.notify_all()
                self.on_ack(ack)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                log.error("tracker refused the stream: %s", exc.details())
            with self._cond:
                if self._unacked or exc.code() != grpc.StatusCode.CANCELLED:
                    log.warning("tracker stream broke (%s); will reconnect and resend", exc.code())
                    self._broken = f"{exc.code()}: {exc.details()}"
                self._cond.notify_all()

    def _reconnect_locked(self) -> None:
        if self._broken and "UNAUTHENTICATED" in self._broken:
            raise PermissionError(f"the tracker refused our token ({self._broken}); pass the right --token")
        self._cond.release()
        try:
            self._outbox.put(_END)
            self._channel.close()
            deadline = time.monotonic() + self.reconnect_timeout_s
            while True:
                channel = open_channel(self.url, self.root_certificate)
                try:
                    grpc.channel_ready_future(channel).result(timeout=1.0)
                    channel.close()
                    break
                except grpc.FutureTimeoutError:
                    channel.close()
                if time.monotonic() > deadline:
                    raise ConnectionError(
                        f"tracker at {self.url} did not come back within {self.reconnect_timeout_s:.0f} s; "
                        f"{len(self._unacked)} frames are unacknowledged; check the tracker and run again"
                    )
        finally:
            self._cond.acquire()
        self._broken = None
        self.reconnects += 1
        self._open()
        log.info("reconnected to the tracker; resending %d unacknowledged frames", len(self._unacked))
        for message in self._unacked.values():
            self._outbox.put(message)
