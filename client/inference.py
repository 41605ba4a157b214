"""Frames to Triton over one gRPC stream, with backpressure and nothing lost.

At most ``max_in_flight`` frames are unanswered at a time: ``submit`` blocks beyond that, which
is the backpressure a camera loop feels. Triton answers a stream in request order, so every
answer (result or per-frame error) settles the oldest unanswered frame. If the stream itself
breaks (Triton restarted, network gone), the stream is reopened once the server is live again and
every unanswered frame is sent again, so each frame ends up answered exactly once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from loopstream.client.reconnecting import POLL_S, ReconnectingStream
from loopstream.client.shared_memory import SharedMemorySlots
from loopstream.client.sources import Frame
from loopstream.serving.versions import ready_versions_open

log = logging.getLogger(__name__)

INPUT_OF_DTYPE = {"uint8": ("FRAME_U8", "UINT8"), "uint16": ("FRAME_U16", "UINT16")}


@dataclass
class _InFlight:
    frame: Frame
    sent_s: float
    slot: int | None  # shared-memory slot holding the frame, if any


@dataclass(frozen=True)
class FrameResult:
    frame: Frame
    detections: np.ndarray | None  # [loops, 11] in loopstream.core.detections.LOOP_COLUMNS order
    error: str | None
    latency_s: float


class InferenceStream(ReconnectingStream):
    """A bounded window of frames in flight on one Triton gRPC stream."""

    def __init__(
        self,
        url: str,
        model_name: str,
        on_result: Callable[[FrameResult], None],
        model_version: str = "",
        max_in_flight: int = 8,
        reconnect_timeout_s: float = 120.0,
        shared_memory: bool = False,
        pixel_nm: float | None = None,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.model_version = model_version
        self.on_result = on_result
        self.max_in_flight = max_in_flight
        self.reconnect_timeout_s = reconnect_timeout_s
        self.server = f"Triton at {url}"
        self.pixel_nm = pixel_nm  # the session's: pipelines resample frames to their network's
        self.shared_memory = shared_memory
        self._slots: SharedMemorySlots | None = None  # sized by the first frame
        self._client = triton.InferenceServerClient(url)
        self._pending: OrderedDict[int, _InFlight] = OrderedDict()
        self._cond = threading.Condition()
        self._init_reconnecting()
        self._start_stream()

    def submit(self, frame: Frame) -> None:
        """Send one frame; blocks while ``max_in_flight`` frames are unanswered."""
        if frame.image.dtype.name not in INPUT_OF_DTYPE or frame.image.ndim not in (2, 3):
            self.on_result(FrameResult(frame, None, _bad_frame_message(frame), 0.0))
            return
        with self._cond:
            self._wait_locked(lambda: len(self._pending) >= self.max_in_flight or self._broken is not None)
            entry = _InFlight(frame, time.monotonic(), self._slot_for(frame.image))
            self._pending[frame.index] = entry
            self._send(entry)

    def drain(self) -> None:
        """Wait until every submitted frame is answered (reconnecting as often as needed)."""
        with self._cond:
            self._wait_locked(lambda: bool(self._pending))

    def close(self) -> None:
        """Drain, then close the stream: an open stream would block Triton's shutdown."""
        try:
            self.drain()
        finally:
            self._client.stop_stream()
            if self._slots is not None:
                self._slots.close(self._client)
            self._client.close()

    def _slot_for(self, image: np.ndarray) -> int | None:
        """A shared-memory slot for ``image``, or None to send it in the request body."""
        if not self.shared_memory:
            return None
        if self._slots is None:
            self._slots = SharedMemorySlots(self.max_in_flight, image.nbytes)
            self._slots.register(self._client)
        return self._slots.acquire() if image.nbytes <= self._slots.slot_bytes else None

    def _send(self, entry: _InFlight) -> None:
        frame = entry.frame
        name, datatype = INPUT_OF_DTYPE[frame.image.dtype.name]
        tensor = triton.InferInput(name, list(frame.image.shape), datatype)
        if entry.slot is None:
            tensor.set_data_from_numpy(np.ascontiguousarray(frame.image))
        else:
            assert self._slots is not None  # the slot came from them
            self._slots.attach(tensor, frame.image, entry.slot)
        self._client.async_stream_infer(
            self.model_name,
            [tensor],
            model_version=self.model_version,
            outputs=[triton.InferRequestedOutput("DETECTIONS")],  # not the optional MASKS_RLE
            request_id=str(frame.index),
            parameters={"pixel_nm": float(self.pixel_nm)} if self.pixel_nm else None,
        )

    def _start_stream(self) -> None:
        self._client.start_stream(callback=functools.partial(self._on_response, self._generation))

    def _on_response(
        self, generation: int, result: triton.InferResult | None, error: InferenceServerException | None
    ) -> None:
        with self._cond:
            if error is not None and error.status() is not None:
                # A gRPC status on the stream means the stream itself is gone, not one frame.
                self._stream_broke(str(error), generation)
                return
            if generation != self._generation:
                return  # a late answer on a stream already replaced: its frame is resent
            if not self._pending:
                log.error("answer from Triton with no frame waiting for it; ignored")
                return
            index, entry = self._pending.popitem(last=False)
            if result is not None and result.get_response().id not in ("", str(index)):
                log.error("Triton answered frame %s out of order", result.get_response().id)
            if entry.slot is not None:
                assert self._slots is not None  # the slot came from them
                self._slots.release(entry.slot)
            self._cond.notify_all()
        frame = entry.frame
        detections = None if result is None else result.as_numpy("DETECTIONS")
        message = (
            None if error is None else f"Triton rejected frame {index} ({frame.origin}): {error.message()}"
        )
        self.on_result(FrameResult(frame, detections, message, time.monotonic() - entry.sent_s))

    def _unanswered(self) -> int:
        return len(self._pending)

    def _discard_stream(self) -> None:
        self._client.stop_stream()
        self._client.close()

    def _server_ready(self) -> bool:
        client = triton.InferenceServerClient(self.url)
        try:
            return client.is_model_ready(self.model_name, self.model_version)
        except InferenceServerException:
            return False
        finally:
            client.close()

    def _reopen_locked(self) -> None:
        """A new client and stream; every unanswered frame is sent again."""
        self._client = triton.InferenceServerClient(self.url)
        if self._slots is not None:
            self._slots.register(self._client)  # a restarted server forgot the registration
        self._start_stream()
        for entry in self._pending.values():
            entry.sent_s = time.monotonic()
            self._send(entry)


def pinned_version(url: str, model_name: str, requested: str = "", timeout_s: float = 120.0) -> str:
    """The version a session sends every frame to: ``requested``, or else the highest one ready now.

    Triton sends an unversioned request to its highest ready version, which changes when a newer
    version is loaded; pinning at session open keeps one session on one model. Waits up to
    ``timeout_s`` for Triton to be live with a ready version, like a reconnect does.
    """
    if requested:
        return requested
    deadline = time.monotonic() + timeout_s
    problem = "no answer"
    while True:
        try:
            with triton.InferenceServerClient(url) as client:
                versions = ready_versions_open(client, model_name)
            if versions:
                return str(versions[-1])
            problem = f"no version of {model_name} is ready"
        except InferenceServerException as exc:
            problem = exc.message()
        if time.monotonic() > deadline:
            raise ConnectionError(
                f"Triton at {url} has no ready version of {model_name} after {timeout_s:.0f} s ({problem}); "
                "start Triton with that model loaded (check --triton), then open the session again"
            )
        time.sleep(POLL_S)


def _bad_frame_message(frame: Frame) -> str:
    return (
        f"frame {frame.index} ({frame.origin}) has dtype {frame.image.dtype.name} "
        f"and shape {frame.image.shape}; "
        "the pipeline takes 2-D uint8 or uint16 images: convert the source's frames"
    )
