"""Shared fixtures and paths: a real local stack (tritonserver + tracker processes on 127.0.0.1),
the shipped repository's default versions, the creme-ds25s sample and the shen2021-fecral video
beside the repository."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton

from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.serving import repository
from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton
from loopstream.tracker.client import TrackerClient
from loopstream.tracker.server import RunningTracker, ServerConfig, serve
from loopstream.tracker.store import AB_FRAME_COLUMNS, MIGRATIONS
from loopstream.v1 import tracker_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOOPSTREAM_DATA", ROOT.parent / "shared" / "data"))
CREME = DATA / "creme-ds25s" / "train" / "annotations.json"
CREME_IMAGE = CREME.parent / "imgs" / "3.png"  # a real bright-field frame, 512 x 512
# A real in-situ video (1120 x 710 JPEG frames; evaluation only, never committed: its README).
SHEN_FRAMES = DATA / "shen2021-fecral" / "frames"


def default_version(pipeline: str) -> str:
    """The shipped pipeline version a request naming none gets, as a path segment."""
    return str(repository.default_version(REPOSITORY, pipeline))


CORE_MODEL = REPOSITORY / "loops_semantic_core" / default_version("loops_semantic") / "model.onnx"
SEMANTIC_V1_ONNX = REPOSITORY / "loops_semantic_core" / "1" / "model.onnx"


def differing_versions(min_area_px: int) -> dict[int, PipelineSpec]:
    """Settings of two loops_semantic versions that answer differently on one network: version 1
    as shipped, version 2 keeping only loops of at least ``min_area_px``, so an answer shows which
    version gave it."""
    shipped = PipelineSpec.read(REPOSITORY / "loops_semantic" / "1" / "pipeline.json")
    return {1: shipped, 2: PipelineSpec(**{**shipped.__dict__, "min_area_px": min_area_px})}


def write_versions(root: Path, specs: dict[int, PipelineSpec]) -> Path:
    """A model repository under ``root`` with these loops_semantic versions (all on SEMANTIC_V1_ONNX)."""
    for version, spec in specs.items():
        repository.add_version(root / "repository", "loops_semantic", spec, SEMANTIC_V1_ONNX, version)
    return root / "repository"


def infer_detections(url: str, pipeline: str, frame: np.ndarray, version: str) -> np.ndarray:
    """One uint16 frame through ``pipeline`` at ``version`` ("" = Triton's choice): its DETECTIONS."""
    with triton.InferenceServerClient(url) as client:
        tensor = triton.InferInput("FRAME_U16", list(frame.shape), "UINT16")
        tensor.set_data_from_numpy(frame)
        return client.infer(pipeline, [tensor], model_version=version).as_numpy("DETECTIONS")


# Fixtures that start a tritonserver; a test using one is marked ``triton`` (README, "Testing"). A
# test that starts Triton itself, not through one of these, carries ``@pytest.mark.triton``.
TRITON_FIXTURES = {"stack", "ab_stack", "own_stack", "replicas", "served", "triton_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if TRITON_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.triton)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """One local stack for the tests that only stream through it."""
    assert CORE_MODEL.exists(), f"{CORE_MODEL} is missing: the shipped model must be committed"
    with LocalStack(tmp_path_factory.mktemp("stack")) as running:
        yield running


TRACKER_TOKEN = "tracker-token-7c1d"  # the bearer token of every in-process test tracker


def serve_tracker(db: Path, metrics_port: int = 0, **config: Any) -> RunningTracker:
    """A tracker in this process on 127.0.0.1 (ephemeral gRPC port; metrics on an ephemeral one,
    -1 = none) with TRACKER_TOKEN."""
    return serve(ServerConfig(db=db, port=0, metrics_port=metrics_port, token=TRACKER_TOKEN, **config))


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(key, certificate) PEM files for localhost and 127.0.0.1, made with the openssl CLI."""
    key, cert = folder / "tls.key", folder / "tls.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def tracker_client(running: RunningTracker) -> TrackerClient:
    """A gRPC client of ``running`` with TRACKER_TOKEN (close it after use)."""
    return TrackerClient(f"127.0.0.1:{running.port}", TRACKER_TOKEN)


@pytest.fixture
def client(tracker: RunningTracker) -> Iterator[TrackerClient]:
    """A client of the test module's own ``tracker`` fixture (each module configures its tracker)."""
    running_client = tracker_client(tracker)
    yield running_client
    running_client.close()


def session_spec(config: SimulationConfig, microscope_id: str, sample: str = "Fe-9Cr") -> pb.SessionSpec:
    """A session for the frames of a simulated microscope: its pixel size, frame rate and dose rate."""
    return pb.SessionSpec(
        microscope_id=microscope_id,
        sample=sample,
        pixel_size_nm=config.pixel_size_nm,
        frame_rate_hz=config.frame_rate_hz,
        dose_rate_ions_cm2_s=config.dose_rate_ions_cm2_s,
    )


def open_session(client: TrackerClient, config: SimulationConfig, microscope_id: str) -> str:
    """Open a tracker session for frames of ``config``; its id."""
    return client.OpenSession(session_spec(config, microscope_id)).session_id


def schema_1_store(path: Path) -> sqlite3.Connection:
    """An empty tracker store as the first release wrote it (schema 1), open for inserts."""
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (1)")
    return db


def stored_ab_frames(db_path: Path, session_id: str) -> pd.DataFrame:
    """Each stored frame's arm, latency and shadow agreement, read straight from the tracker's file."""
    with sqlite3.connect(db_path) as db:
        return pd.read_sql_query(
            f"SELECT frame_index, model_version, {', '.join(AB_FRAME_COLUMNS)} FROM frames "
            "WHERE sid = (SELECT sid FROM sessions WHERE session_id = ?) ORDER BY frame_index",
            db,
            params=(session_id,),
        ).astype({"frame_index": "int64"})


def served_versions(
    root: Path, pipeline: str, specs: tuple[PipelineSpec, ...], network: Path
) -> Iterator[str]:
    """A tritonserver serving ``pipeline`` as versions 1, 2, ... (one per spec) of ``network``, for
    comparing settings on the same frames through the real server; yields its gRPC address."""
    for version, spec in enumerate(specs, start=1):
        repository.add_version(root / "repository", pipeline, spec, network, version)
    options = TritonOptions(
        repository=root / "repository",
        ports=TritonPorts.ephemeral(),
        model_control="explicit",
        load_models=(f"{pipeline}_core", pipeline),
    )
    process = start_triton(options, root / "cache", root / "tritonserver.log", timeout_s=300)
    yield f"127.0.0.1:{options.ports.grpc}"
    process.stop()
