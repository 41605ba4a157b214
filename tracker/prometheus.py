"""Prometheus metrics of one tracker, on its own registry so several can run in one process."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from loopstream.core.detections import loop_count
from loopstream.tracker.ingest import REJECTIONS, IngestResult
from loopstream.tracker.store import STORE_ERROR_KINDS
from loopstream.v1 import tracker_pb2 as pb

RATE_WINDOW_S = 10.0
# Label values come only from sessions' stored, validated fields; past this many distinct
# microscopes the rest share the label "other", so no client can grow /metrics without bound.
MAX_MICROSCOPE_LABELS = 64


class TrackerMetrics:
    def __init__(self, open_sessions: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        # Labels: microscope = the session's microscope_id, arm = the session's stored model version
        # ("" = Triton's latest); both validated at OpenSession and few per facility.
        self.frames = Counter(
            "loopstream_tracker_frames",
            "Frames stored or acknowledged as duplicates, by outcome (accepted, duplicate)",
            ["microscope", "arm", "outcome"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "loopstream_tracker_frames_rejected",
            "Frames not stored, by reason (ingest.REJECTIONS); no label comes from the frame",
            ["reason"],
            registry=self.registry,
        )
        for reason in REJECTIONS:
            self.rejected.labels(reason)
        self.store_errors = Counter(
            "loopstream_tracker_store_errors",
            "Failed store writes, by kind (full: database or disk is full; io; corrupt; other)",
            ["kind"],
            registry=self.registry,
        )
        for kind in STORE_ERROR_KINDS:
            self.store_errors.labels(kind)
        self.detections = Counter(
            "loopstream_tracker_detections",
            "Loops in accepted frames",
            ["microscope", "arm"],
            registry=self.registry,
        )
        self.frame_latency = Histogram(
            "loopstream_tracker_frame_latency_seconds",
            "Lag from a frame's arrival to its acknowledgement (link, statistics, durable commit)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "loopstream_tracker_inference_latency_seconds",
            "Client-measured inference latency of accepted frames, by arm (A/B latency comparison)",
            ["arm"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.shadow_f1 = Histogram(
            "loopstream_tracker_shadow_f1",
            "Matched-loop F1 of a shadow candidate against the session's arm, per shadowed frame",
            ["arm", "candidate"],
            buckets=(0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=self.registry,
        )
        self.commit_latency = Histogram(
            "loopstream_tracker_store_commit_seconds",
            "Duration of one frame's store transaction, fsync included",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        Gauge("loopstream_tracker_open_sessions", "Sessions not closed", registry=self.registry).set_function(
            open_sessions
        )
        Gauge(
            "loopstream_tracker_frames_per_second",
            f"Frames stored per second over the last {RATE_WINDOW_S:g} s",
            registry=self.registry,
        ).set_function(self._rate)
        self._stored: collections.deque[float] = collections.deque()
        self._microscopes: set[str] = set()
        self._lock = threading.Lock()

    def _microscope(self, microscope_id: str) -> str:
        with self._lock:
            if microscope_id in self._microscopes or len(self._microscopes) < MAX_MICROSCOPE_LABELS:
                self._microscopes.add(microscope_id)
                return microscope_id
        return "other"

    def on_frame(self, result: IngestResult, frame: pb.FrameDetections, seconds: float) -> None:
        """Count one acknowledged frame; ``seconds`` from its arrival to its ack."""
        self.frame_latency.observe(seconds)
        if not result.accepted:
            self.rejected.labels(result.rejection).inc()
            return
        microscope, arm = self._microscope(result.microscope_id), result.arm
        self.frames.labels(microscope, arm, "duplicate" if result.duplicate else "accepted").inc()
        if result.duplicate:
            return
        self.detections.labels(microscope, arm).inc(loop_count(frame))
        if frame.latency_s > 0:
            self.inference_latency.labels(arm).observe(frame.latency_s)
        if frame.HasField("shadow"):
            self.shadow_f1.labels(arm, result.shadow_arm).observe(frame.shadow.f1)
        now = time.monotonic()
        with self._lock:
            self._stored.append(now)
            while self._stored and self._stored[0] < now - RATE_WINDOW_S:
                self._stored.popleft()

    def _rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._stored and self._stored[0] < now - RATE_WINDOW_S:
                self._stored.popleft()
            return len(self._stored) / RATE_WINDOW_S

    def serve_http(self, host: str, port: int) -> WSGIServer:
        """Start /metrics on ``port`` (0 = ephemeral); returns the HTTP server (``server_port``)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
