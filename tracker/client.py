"""A thin Python client of the tracker: messages from DataFrames, a channel with the token.

Used by tests and the benchmark, and usable by facility scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
import numpy as np
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS, encode_loops
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc


def frame_message(
    session_id: str,
    frame_index: int,
    timestamp_s: float,
    loops: pd.DataFrame,
    width_px: int,
    height_px: int,
    model_name: str = "",
    model_version: str = "",
) -> pb.FrameDetections:
    """FrameDetections from a DataFrame with the ``LOOP_COLUMNS`` (extra columns ignored)."""
    msg = pb.FrameDetections(
        session_id=session_id,
        frame_index=frame_index,
        timestamp_s=timestamp_s,
        model_name=model_name,
        model_version=model_version,
        width_px=width_px,
        height_px=height_px,
    )
    msg.loops.extend(encode_loops(loops[LOOP_COLUMNS].to_numpy(np.float32)))
    return msg


class TrackerClient:
    """A stub with the bearer token attached to every call."""

    def __init__(
        self, target: str, token: str | None = None, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self.channel = (
            grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        )
        self.stub = pb_grpc.TrackerStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, rpc: str):
        """``client.GetSession(request)`` calls the stub with the token metadata."""
        method = getattr(self.stub, rpc)
        return lambda request, **kw: method(request, metadata=self.metadata, **kw)

    def stream(self, messages: Iterable[pb.FrameDetections]) -> Iterator[pb.Ack]:
        return self.stub.StreamDetections(iter(messages), metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
