"""Assembles a running tracker: store, engine, gRPC server (health, reflection, auth, TLS), metrics.

``serve`` is what the CLI runs and what tests call in-process on 127.0.0.1:0.
"""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from loopstream.tracker.auth import BearerTokenInterceptor
from loopstream.tracker.engine import Defaults, TrackerEngine
from loopstream.tracker.prometheus import TrackerMetrics
from loopstream.tracker.rollout import PolicyFile
from loopstream.tracker.service import TrackerService
from loopstream.tracker.store import Store
from loopstream.v1 import tracker_pb2, tracker_pb2_grpc

SERVICE_NAME = tracker_pb2.DESCRIPTOR.services_by_name["Tracker"].full_name
log = logging.getLogger("loopstream.tracker")


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
    max_workers: int = 32  # every open stream holds one worker thread
    synchronous: str = "FULL"  # SQLite: FULL survives power loss, NORMAL only process crashes
    ab_policy: str | None = None  # JSON file of model versions and weights; None = the defaults


@dataclass
class RunningTracker:
    server: grpc.Server
    port: int
    metrics_port: int  # -1 when off
    engine: TrackerEngine
    health: health.HealthServicer
    metrics: TrackerMetrics
    _http: object | None = None

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop accepting, let in-flight calls (and commits) finish within ``grace_s``, close the store."""
        self.health.enter_graceful_shutdown()
        self.engine.shutdown()
        self.server.stop(grace_s).wait()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.engine.store.close()


def serve(config: ServerConfig) -> RunningTracker:
    """Start a tracker and return it with its bound ports."""
    store = Store(config.db, config.synchronous)
    policy = PolicyFile(config.ab_policy) if config.ab_policy else None  # re-read when the file changes
    engine = TrackerEngine(store, config.defaults, assign=policy.assign if policy else None)
    metrics = TrackerMetrics(engine.open_sessions)
    engine.on_commit = metrics.commit_latency.observe
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers), interceptors=interceptors
    )
    tracker_pb2_grpc.add_TrackerServicer_to_server(TrackerService(engine, metrics.on_frame, policy), server)
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
    http, metrics_port = None, -1
    if config.metrics_port >= 0:
        http = metrics.serve_http(config.host, config.metrics_port)
        metrics_port = http.server_port
    return RunningTracker(server, port, metrics_port, engine, health_servicer, metrics, http)
