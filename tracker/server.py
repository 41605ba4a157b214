"""Assembles a running tracker: store, engine, gRPC server (health, reflection, auth, TLS), metrics.

``serve`` is what the CLI runs and what tests call in-process on 127.0.0.1:0.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loopstream.tracker.auth import BearerTokenInterceptor
from loopstream.tracker.engine import Defaults, TrackerEngine
from loopstream.tracker.previews import LatestPreviews
from loopstream.tracker.prometheus import TrackerMetrics
from loopstream.tracker.rollout import PolicyFile
from loopstream.tracker.service import StreamLimits, TrackerService
from loopstream.tracker.store import Store
from loopstream.tracker.webview import WebView
from loopstream.v1 import tracker_pb2, tracker_pb2_grpc

SERVICE_NAME = tracker_pb2.DESCRIPTOR.services_by_name["Tracker"].full_name
log = logging.getLogger("loopstream.tracker")
UNARY_WORKERS = 16  # threads only unary calls (and health) can use
STORE_PROBE_S = 1.0  # how often readiness re-checks a store that could not write


@dataclass(frozen=True)
class ServerConfig:
    db: str | Path = "loopstream-tracker.db"
    host: str = "127.0.0.1"
    port: int = 50061  # 0 = ephemeral
    metrics_port: int = 9102  # 0 = ephemeral, -1 = no metrics endpoint
    token: str | None = None  # None = no authentication (the CLI demands --no-auth for that)
    tls_cert: str | None = None  # PEM paths; both or neither
    tls_key: str | None = None
    defaults: Defaults = field(default_factory=Defaults)
    # The largest message a client may send (a frame's detections): gRPC's default, stated so the
    # client's --tracker-max-message-bytes can match it. A larger one ends the client's stream with
    # RESOURCE_EXHAUSTED, and the client fails that frame.
    max_message_bytes: int = 4 * 1024 * 1024
    # Every open stream holds a worker thread: the pool has one per allowed watcher and detection
    # stream plus UNARY_WORKERS, so no number of open streams can starve unary calls and health.
    max_watchers: int = 256
    max_detection_streams: int = 64
    synchronous: str = "FULL"  # SQLite: FULL survives power loss, NORMAL only process crashes
    ab_policy: str | None = None  # JSON file of model versions and weights; None = the defaults
    check_integrity: bool = True  # PRAGMA quick_check before serving (reads the whole store)
    view_port: int = -1  # the live web view (HTTP, HTTPS with TLS); 0 = ephemeral, -1 = off
    viewer_token: str | None = None  # read-only token of the web view (the gRPC API refuses it)


@dataclass
class RunningTracker:
    server: grpc.Server
    port: int
    metrics_port: int  # -1 when off
    engine: TrackerEngine
    health: health.HealthServicer
    metrics: TrackerMetrics
    _http: WSGIServer | None = None
    view: WebView | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def view_port(self) -> int:
        """The web view's port; -1 when off."""
        return self.view.port if self.view is not None else -1

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop accepting, let in-flight calls (and commits) finish within ``grace_s``, close the store."""
        self._stopping.set()
        self.health.enter_graceful_shutdown()
        self.engine.shutdown()
        if self.view is not None:
            self.view.stop()  # ends the live streams, so nothing reads the store while it closes
        self.server.stop(grace_s).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.engine.store.close()


def serve(config: ServerConfig) -> RunningTracker:
    """Start a tracker and return it with its bound ports."""
    store = Store(config.db, config.synchronous, config.check_integrity)
    policy = PolicyFile(config.ab_policy) if config.ab_policy else None  # re-read when the file changes
    metrics = TrackerMetrics(lambda: engine.open_sessions())  # first read at a scrape, after the next line
    engine = TrackerEngine(
        store, config.defaults, metrics.commit_latency.observe, policy.assign if policy else None
    )
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    workers = config.max_watchers + config.max_detection_streams + UNARY_WORKERS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", config.max_message_bytes)],
    )
    previews = LatestPreviews()
    view = None
    on_frame = metrics.on_frame
    if config.view_port >= 0:
        tokens = [t for t in (config.token, config.viewer_token) if t]
        view = WebView(engine, previews, tokens, metrics.registry)

        def on_frame(result, frame, seconds) -> None:
            metrics.on_frame(result, frame, seconds)
            view.on_frame(result, frame, seconds)

    service = TrackerService(
        engine,
        on_frame,
        policy,
        previews if view is not None else None,
        on_store_error=lambda kind: metrics.store_errors.labels(kind).inc(),
        limits=StreamLimits(config.max_watchers, config.max_detection_streams),
    )
    tracker_pb2_grpc.add_TrackerServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert or config.tls_key:
        if not (config.tls_cert and config.tls_key):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        key, cert = Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes()
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the gRPC port {address}")
    server.start()
    if view is not None:
        try:
            tls = (config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
            view.start(config.host, config.view_port, tls)
        except BaseException:
            server.stop(0)
            raise
    http, metrics_port = None, -1
    if config.metrics_port >= 0:
        http = metrics.serve_http(config.host, config.metrics_port)
        metrics_port = http.server_port
    running = RunningTracker(server, port, metrics_port, engine, health_servicer, metrics, http, view)
    threading.Thread(target=_readiness, args=(running,), name="store-readiness", daemon=True).start()
    return running


def _readiness(running: RunningTracker) -> None:
    """The Tracker service is NOT_SERVING while the store cannot write (e.g. the disk is full): a
    readiness probe on it takes the tracker out of rotation; the server itself ("") stays SERVING,
    so a liveness probe does not restart a tracker that a restart would not help."""
    store, ready = running.engine.store, True
    while not running._stopping.wait(STORE_PROBE_S):
        if store.write_error is not None:
            store.probe_write()
        now = store.write_error is None
        if now != ready:
            serving = health_pb2.HealthCheckResponse
            running.health.set(SERVICE_NAME, serving.SERVING if now else serving.NOT_SERVING)
            message = "store writable again" if now else "store cannot write: not ready"
            log.warning(message, extra={"error": store.write_error})
            ready = now
