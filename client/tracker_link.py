"""Detections to the tracker over one gRPC stream, acknowledged after durable storage.

The tracker acknowledges each frame once it is committed, and storing a frame again is a no-op
there, so the rule here is simple: keep every unacknowledged frame, and whenever the stream ends
unasked (tracker crashed, or restarted gracefully) reconnect in the background and send them all
again (``loopstream.client.reconnecting``). Nothing accepted is lost or doubled.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import grpc

from loopstream.client.reconnecting import ReconnectingStream
from loopstream.core.detections import loop_count
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_END = object()
# The largest FrameDetections the tracker takes (its --max-message-bytes): gRPC's default receive
# limit, stated explicitly on both sides. ~100 bytes per loop, so ~40,000 loops per frame.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def open_channel(url: str, root_certificate: bytes | None = None) -> grpc.Channel:
    if root_certificate is None:
        return grpc.insecure_channel(url)
    return grpc.secure_channel(url, grpc.ssl_channel_credentials(root_certificates=root_certificate))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class DetectionStream(ReconnectingStream):
    """Sends FrameDetections of one session and tracks their acknowledgements.

    A message larger than ``max_message_bytes`` (the tracker's ``--max-message-bytes``, stated
    to this client by ``--tracker-max-message-bytes``) is never sent: its frame fails at once
    with the reason. If the tracker still finds a message too large (the two limits disagree),
    it ends the stream with RESOURCE_EXHAUSTED; the frame it was reading, the oldest
    unacknowledged one, fails with the tracker's reason, and the others are resent.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        on_ack: Callable[[pb.Ack], None] | None = None,
        reconnect_timeout_s: float = 120.0,
        root_certificate: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.url = url
        self.server = f"the tracker at {url}"
        self.metadata = auth_metadata(token)
        self.on_ack = on_ack or (lambda ack: None)
        self.reconnect_timeout_s = reconnect_timeout_s
        self.root_certificate = root_certificate
        self.max_message_bytes = max_message_bytes
        self.rejected: list[pb.Ack] = []
        self._unacked: OrderedDict[int, pb.FrameDetections] = OrderedDict()
        self._cond = threading.Condition()
        self._ending = False  # set by close(): the end of the stream was asked for
        self._init_reconnecting()
        self._open()

    def send(self, message: pb.FrameDetections) -> None:
        """Queue one frame's detections; returns at once, also while the tracker is away."""
        size = message.ByteSize()
        if size > self.max_message_bytes:
            self._reject(
                message,
                f"its detections message ({loop_count(message)} loops) is {size} bytes, over the tracker's "
                f"limit of {self.max_message_bytes} bytes; raise the limit on both sides "
                "(loopstream-tracker --max-message-bytes, loopstream-client --tracker-max-message-bytes)",
            )
            return
        with self._cond:
            self._unacked[message.frame_index] = message
            self._outbox.put(message)

    @property
    def unacknowledged(self) -> int:
        with self._cond:
            return len(self._unacked)

    def drain(self) -> None:
        """Wait for an acknowledgement of every frame sent (reconnects happen in the background)."""
        with self._cond:
            self._wait_locked(lambda: bool(self._unacked))

    def close(self) -> None:
        try:
            self.drain()
        finally:
            with self._cond:
                self._ending = True
            self._outbox.put(_END)
            self._reader.join(10)
            self._channel.close()

    def _open(self) -> None:
        self._channel = open_channel(self.url, self.root_certificate)
        self._outbox: queue.Queue = queue.Queue()
        stub = pb_grpc.TrackerStub(self._channel)
        responses = stub.StreamDetections(self._requests(self._outbox), metadata=self.metadata)
        self._reader = threading.Thread(
            target=self._read_acks, args=(responses, self._generation), daemon=True
        )
        self._reader.start()

    @staticmethod
    def _requests(outbox: queue.Queue) -> Iterator[pb.FrameDetections]:
        while (message := outbox.get()) is not _END:
            yield message

    def _read_acks(self, responses: Iterator[pb.Ack], generation: int) -> None:
        code = None
        reason = "the tracker ended the stream (e.g. it is restarting)"
        try:
            for ack in responses:
                with self._cond:
                    self._unacked.pop(ack.frame_index, None)
                    if not ack.accepted:
                        self.rejected.append(ack)
                    self._cond.notify_all()
                self.on_ack(ack)
        except grpc.RpcError as exc:
            code = exc.code()
            reason = f"{code.name}: {exc.details()}"
        too_large = None
        with self._cond:
            if self._ending:
                return
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                log.error("tracker refused the stream: %s", reason)
                refused = PermissionError(f"the tracker refused our token ({reason}); pass the right --token")
                self._stream_broke(reason, generation, final=refused)
                return
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and self._unacked:
                # The tracker reads and acknowledges in order: the oldest unacknowledged frame is
                # the one it could not take. Resending it would fail the same way, forever.
                _, too_large = self._unacked.popitem(last=False)
            self._stream_broke(reason, generation)
        if too_large is not None:
            self._reject(too_large, f"the tracker refused its detections message ({reason})")

    def _reject(self, message: pb.FrameDetections, reason: str) -> None:
        """Fail one frame without sending it (again): reported like a frame the tracker rejected."""
        ack = pb.Ack(
            session_id=message.session_id, frame_index=message.frame_index, accepted=False, error=reason
        )
        log.error("frame %d not sent to the tracker: %s", message.frame_index, reason)
        with self._cond:
            self.rejected.append(ack)
        self.on_ack(ack)

    def _unanswered(self) -> int:
        return len(self._unacked)

    def _discard_stream(self) -> None:
        self._outbox.put(_END)
        self._channel.close()
        self._reader.join(10)

    def _server_ready(self) -> bool:
        channel = open_channel(self.url, self.root_certificate)
        try:
            grpc.channel_ready_future(channel).result(timeout=1.0)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            channel.close()

    def _reopen_locked(self) -> None:
        self._open()
        for message in self._unacked.values():
            self._outbox.put(message)
