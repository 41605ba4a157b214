"""A thin Python client of the tracker: messages from DataFrames, a channel with the token.

Used by tests and the benchmark, and usable by facility scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from loopstream.core.detections import LOOP_COLUMNS, put_loops
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
    loop_table: bool = False,
) -> pb.FrameDetections:
    """FrameDetections from a DataFrame with the ``LOOP_COLUMNS`` (extra columns ignored).

    ``loop_table``: the loops as one table, as this version's client sends them to a tracker that
    reads it; else as ``Loop`` messages (older clients' form, which a test can edit loop by loop).
    """
    msg = pb.FrameDetections(
        session_id=session_id,
        frame_index=frame_index,
        timestamp_s=timestamp_s,
        model_name=model_name,
        model_version=model_version,
        width_px=width_px,
        height_px=height_px,
    )
    put_loops(msg, loops[LOOP_COLUMNS].to_numpy(np.float32), table=loop_table)
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

    def export(
        self,
        session_id: str,
        folder: str | Path,
        on_bytes: Callable[[str, int], None] | None = None,
        join_fragments: bool = False,
    ) -> list[Path]:
        """Write a session's export into ``folder`` as it streams in (never a whole file in memory).

        ``on_bytes(name, n)`` is told each piece's size (a progress bar). A file arrives complete or
        not at all: it is written as NAME.part and renamed on its last piece. ``join_fragments``:
        the tracks with fragments joined offline (``ExportRequest.join_fragments``).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        out, name = None, ""
        try:
            request = pb.ExportRequest(session_id=session_id, join_fragments=join_fragments)
            for chunk in self.stub.ExportSession(request, metadata=self.metadata):
                if out is None:
                    name = Path(chunk.name).name  # no path from the server is trusted
                    out = (folder / f"{name}.part").open("wb")
                out.write(chunk.data)
                if on_bytes is not None:
                    on_bytes(name, len(chunk.data))
                if chunk.last:
                    out.close()
                    out = None
                    written.append((folder / f"{name}.part").replace(folder / name))
        finally:
            if out is not None:
                out.close()
        return written

    def close(self) -> None:
        self.channel.close()
