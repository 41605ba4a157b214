"""Sessions are independent: interleaving them in one tracker changes nothing."""

from __future__ import annotations

import itertools

import grpc
import pytest

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.server import ServerConfig, serve
from loopstream.v1 import tracker_pb2 as pb

CONFIG = SimulationConfig(
    shape=(256, 256), n_frames=60, initial_loops=150, initial_major_px=(6.0, 14.0), max_major_px=20.0
)
MICS = [SimulatedMicroscope(CONFIG, seed=21), SimulatedMicroscope(CONFIG, seed=22)]


def _messages(session_id: str, mic: SimulatedMicroscope) -> list[pb.FrameDetections]:
    return [frame_message(session_id, i, i / 10.0, synthetic.detections(mic, i), 256, 256) for i in range(60)]


def _open(client: TrackerClient) -> str:
    return client.OpenSession(pb.SessionSpec(pixel_size_nm=0.39, frame_rate_hz=10.0)).session_id


def _tracks(client: TrackerClient, session_id: str) -> bytes:
    reply = client.GetTracks(pb.TracksRequest(session_id=session_id))
    reply.session_id = ""
    return reply.SerializeToString()


def test_two_interleaved_sessions_give_the_same_tracks_as_each_alone(tmp_path):
    alone = []
    for k, mic in enumerate(MICS):
        running = serve(ServerConfig(db=tmp_path / f"alone{k}.db", port=0, metrics_port=-1))
        client = TrackerClient(f"127.0.0.1:{running.port}")
        sid = _open(client)
        assert all(a.accepted for a in client.stream(_messages(sid, mic)))
        alone.append(_tracks(client, sid))
        client.close()
        running.stop(0.5)

    running = serve(ServerConfig(db=tmp_path / "together.db", port=0, metrics_port=-1))
    client = TrackerClient(f"127.0.0.1:{running.port}")
    try:
        sids = [_open(client), _open(client)]
        a, b = (_messages(sid, mic) for sid, mic in zip(sids, MICS, strict=True))
        # Frame by frame alternately on one stream, so both linkers advance in lockstep.
        interleaved = list(itertools.chain.from_iterable(zip(a, b, strict=True)))
        acks = list(client.stream(interleaved))
        assert all(x.accepted for x in acks) and len(acks) == 120
        together = [_tracks(client, sid) for sid in sids]
    finally:
        client.close()
        running.stop(0.5)
    assert together == alone
    assert together[0] != together[1]


def test_the_model_family_chooses_the_pipeline_unless_the_session_names_one(tmp_path):
    running = serve(ServerConfig(db=tmp_path / "families.db", port=0, metrics_port=-1))
    client = TrackerClient(f"127.0.0.1:{running.port}")
    try:
        chosen = {
            family: client.OpenSession(
                pb.SessionSpec(pixel_size_nm=0.39, frame_rate_hz=10.0, model_family=family)
            ).model_name
            for family in (pb.MODEL_FAMILY_UNSPECIFIED, pb.MODEL_FAMILY_INSTANCE, pb.MODEL_FAMILY_SEMANTIC)
        }
        named = client.OpenSession(
            pb.SessionSpec(
                pixel_size_nm=0.39,
                frame_rate_hz=10.0,
                model_family=pb.MODEL_FAMILY_INSTANCE,
                model_name="loops_instance_ti",
            )
        )
        with pytest.raises(grpc.RpcError) as refused:
            client.OpenSession(pb.SessionSpec(pixel_size_nm=0.39, frame_rate_hz=10.0, model_name="loops ti"))
    finally:
        client.close()
        running.stop(0.5)
    assert chosen == {
        pb.MODEL_FAMILY_UNSPECIFIED: "loops_semantic",
        pb.MODEL_FAMILY_INSTANCE: "loops_instance",
        pb.MODEL_FAMILY_SEMANTIC: "loops_semantic",
    }
    assert (named.model_name, named.model_version) == ("loops_instance_ti", ""), "its latest version"
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model_name 'loops ti' has characters other than" in refused.value.details()
