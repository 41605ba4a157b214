"""The local stack, as the demo, the end-to-end tests and the benchmarks run it.

One tritonserver and one tracker, each a real child process on 127.0.0.1 with ephemeral ports,
started in order, checked for readiness, and stopped (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopstream.serving.processes import ServiceProcess
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton


@dataclass
class LocalStack:
    workdir: Path
    repository: Path = REPOSITORY
    model_control: str = "none"
    load_models: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    triton_ports: TritonPorts = field(default_factory=TritonPorts.ephemeral)
    tracker_db: Path | None = None
    ab_policy: Path | None = None  # the tracker's --ab-policy file; None = every session on the default
    triton: ServiceProcess | None = None
    tracker: ServiceProcess | None = None
    tracker_port: int = 0

    @property
    def triton_url(self) -> str:
        return f"127.0.0.1:{self.triton_ports.grpc}"

    @property
    def tracker_url(self) -> str:
        return f"127.0.0.1:{self.tracker_port}"

    def start(self) -> LocalStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_triton()
            self.start_tracker()
        except BaseException:
            self.stop()
            raise
        return self

    def start_triton(self) -> None:
        options = TritonOptions(
            repository=self.repository,
            ports=self.triton_ports,
            model_control=self.model_control,
            load_models=self.load_models,
        )
        self.triton = start_triton(options, self.workdir / "cache", self.workdir / "tritonserver.log")

    def start_tracker(self, timeout_s: float = 60.0) -> None:
        """Start (or restart, on the same database) the tracker and wait until it is SERVING."""
        port_file = self.workdir / "tracker.port"
        port_file.unlink(missing_ok=True)
        db = self.tracker_db or self.workdir / "tracker.db"
        env = dict(os.environ, LOOPSTREAM_TRACKER_TOKEN=self.token)
        argv = [
            sys.executable,
            "-m",
            "loopstream.tracker.cli",
            "--host=127.0.0.1",
            f"--port={self.tracker_port}",  # 0 the first time; the same port after a restart
            f"--port-file={port_file}",
            "--metrics-port=0",
            f"--db={db}",
        ]
        if self.ab_policy is not None:
            argv.append(f"--ab-policy={self.ab_policy}")
        self.tracker = ServiceProcess("tracker", argv, env, self.workdir / "tracker.log").start()

        def serving() -> bool:
            if not port_file.exists() or not port_file.read_text().strip():
                return False
            self.tracker_port = int(port_file.read_text())
            with grpc.insecure_channel(self.tracker_url) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

        self.tracker.wait_ready(serving, timeout_s)

    def kill_triton(self) -> None:
        """SIGKILL tritonserver, as a crash would (failure drills)."""
        if self.triton is not None:
            self.triton.kill()

    def kill_tracker(self) -> None:
        """SIGKILL the tracker, as a crash would (failure drills)."""
        if self.tracker is not None:
            self.tracker.kill()

    def stop(self) -> None:
        for process in (self.tracker, self.triton):
            if process is not None:
                process.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
