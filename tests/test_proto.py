"""The committed stubs in loopstream/v1 are exactly what proto/ generates (run scripts/gen-proto)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_proto(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    assert protos, "no .proto files under proto/"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "proto",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated
    stale = [
        str(p)
        for p in generated
        if not (ROOT / p).is_file() or (ROOT / p).read_bytes() != (tmp_path / p).read_bytes()
    ]
    assert not stale, f"stale generated stubs {stale}: run scripts/gen-proto and commit the result"


def test_wire_names_the_client_relies_on_are_stable():
    from loopstream.v1 import tracker_pb2 as pb

    numbers = {
        "FrameDetections": {
            "session_id": 1,
            "frame_index": 2,
            "timestamp_s": 3,
            "model_name": 4,
            "model_version": 5,
            "width_px": 6,
            "height_px": 7,
            "loops": 8,
        },
        "Loop": {
            "score": 1,
            "x_px": 2,
            "y_px": 3,
            "major_px": 4,
            "minor_px": 5,
            "angle_deg": 6,
            "area_px": 7,
            "bbox": 8,
        },
        "Ack": {"session_id": 1, "frame_index": 2, "accepted": 3, "duplicate": 4, "error": 5},
        "Session": {"session_id": 1, "model_name": 3, "model_version": 4},
    }
    for message, fields in numbers.items():
        descriptor = pb.DESCRIPTOR.message_types_by_name[message]
        assert {name: descriptor.fields_by_name[name].number for name in fields} == fields
