"""Container build files (containers/) and the tracker image.

Fast checks always run: the Containerfiles' contracts (pinned, overridable
bases; numpy<2; non-root; health check) and the gRPC health checker the image
uses, against an in-process gRPC server on 127.0.0.1.

The image build itself is opt-in (LOOPSTREAM_CONTAINER_TESTS=1): it needs
root, podman and debootstrap (apt-get install podman debootstrap) and takes
2-4 minutes here (local base ~45 s-2 min on first use, image ~2 min). It builds
a local stand-in for python:3.11-slim with debootstrap (no registry is
reachable), builds the tracker image from a wheelhouse, runs it with a
read-only root filesystem and checks that it answers gRPC health on
127.0.0.1, serves /metrics and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent import futures
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"
HEALTHCHECK = CONTAINERS / "grpc_health_check.py"
TRACKER_FILE = CONTAINERS / "tracker.Containerfile"
TRITON_FILE = CONTAINERS / "triton.Containerfile"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


# ------------------------------------------------------------ Containerfiles


def test_triton_containerfile_pins_the_ngc_base_and_numpy():
    ins = instructions(TRITON_FILE)
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    assert args["TRITON_IMAGE"] == "nvcr.io/nvidia/tritonserver"
    assert re.fullmatch(r"\d\d\.\d\d-py3", args["TRITON_TAG"]), "pin an exact NGC release"
    froms = [a for k, a in ins if k == "FROM"]
    assert froms == ["${TRITON_IMAGE}:${TRITON_TAG}"]
    run = " ".join(a for k, a in ins if k == "RUN")
    assert '"numpy<2"' in run and "numpy.__version__ < '2'" in run
    assert '"loopstream[pipelines]"' in run  # what the Python models import, not the whole project
    env = " ".join(a for k, a in ins if k == "ENV")
    assert "PIP_CONSTRAINT=" in env  # numpy<2 stays pinned in derived images
    assert any(k == "COPY" and "--from=models" in a and "/models" in a for k, a in ins)
    assert ("USER", "triton-server") in ins


def test_tracker_containerfile_is_non_root_with_grpc_healthcheck():
    ins = instructions(TRACKER_FILE)
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE=docker.io/library/python:3.11-slim")
    assert [a for k, a in ins if k == "FROM"] == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    users = [a for k, a in ins if k == "USER"]
    assert users and users[-1] == "10001:10001"
    (health,) = [a for k, a in ins if k == "HEALTHCHECK"]
    assert 'CMD ["loopstream-healthcheck"]' in health
    assert ("ENTRYPOINT", '["loopstream-tracker"]') in ins
    assert ("STOPSIGNAL", "SIGTERM") in ins
    env = " ".join(a for k, a in ins if k == "ENV")
    # Read-only root filesystem: nothing may want to write byte code or caches.
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env
    assert "LOOPSTREAM_TRACKER_HOST=0.0.0.0" in env  # the tracker binds 127.0.0.1 by default
    run = " ".join(a for k, a in ins if k == "RUN")
    assert "numpy.__version__ < '2'" in run
    assert '"loopstream[tracker,ops]"' in run  # the tracker and loopstream-rollout, run in its pod


# -------------------------------------------------------- health checker


@pytest.fixture()
def health_server():
    """A gRPC server on 127.0.0.1 with only the standard health service."""
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, servicer, health_pb2
    server.stop(None)


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_healthcheck_reports_serving_and_not_serving(health_server):
    port, servicer, pb = health_server
    servicer.set("", pb.HealthCheckResponse.SERVING)
    ok = run_check("--port", str(port))
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    servicer.set("", pb.HealthCheckResponse.NOT_SERVING)
    bad = run_check("--port", str(port))
    assert bad.returncode == 1 and "NOT_SERVING" in bad.stdout


def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the check runs
    res = run_check("--port", str(port), "--timeout", "1")
    assert res.returncode == 1 and "UNAVAILABLE" in res.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_healthcheck_speaks_tls_like_the_exec_probe(tmp_path):
    """The chart's TLS probe: `loopstream-healthcheck --ca ca.crt --server-name <service>`."""
    grpc = pytest.importorskip("grpc")
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    name = "ls-loopstream-tracker"
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), crt.read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        assert run_check("--port", str(port), "--ca", str(crt), "--server-name", name).returncode == 0
        # Plaintext against a TLS port must not pass.
        assert run_check("--port", str(port), "--timeout", "2").returncode == 1
    finally:
        server.stop(None)


# ------------------------------------------------------- the tracker image

IMAGE = "localhost/loopstream-tracker:pytest"
# The wheelhouse is built by this interpreter, so the base must carry the same
# Python: Debian 12 ships 3.11, Debian 13 ships 3.13.
SUITE = {(3, 11): "bookworm", (3, 13): "trixie"}.get(sys.version_info[:2])
BASE = f"localhost/loopstream-base:{SUITE}"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]
[engine]
runtime = "runc"
"""


def _container_tests_skip_reason() -> str | None:
    if os.environ.get("LOOPSTREAM_CONTAINER_TESTS") != "1":
        return "image build is slow (2-4 min): set LOOPSTREAM_CONTAINER_TESTS=1 to run it"
    if shutil.which("podman") is None:
        return "podman not installed (apt-get install podman debootstrap)"
    if shutil.which("debootstrap") is None:
        return "debootstrap not installed (needed for the local base image)"
    if shutil.which("runc") is None:  # crun fails here: "cgroups in hybrid mode not supported"
        return "runc not installed (apt-get install runc)"
    if os.geteuid() != 0:
        return "building the local base with debootstrap needs root"
    if SUITE is None:
        return (
            f"no Debian release ships Python {sys.version_info[0]}.{sys.version_info[1]} for the local base"
        )
    if not (ROOT / "tracker" / "cli.py").exists():
        return "tracker/cli.py not written yet"
    return None


def _podman(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True):
    return subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, check=check
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(_container_tests_skip_reason() is not None, reason=str(_container_tests_skip_reason()))
def test_tracker_image_builds_and_answers_grpc_health(tmp_path):
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    # 1. Local base (cached in podman's store after the first run).
    subprocess.run(
        ["bash", str(CONTAINERS / "build-local-base.sh"), BASE, SUITE],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    # 2. Build context: Containerfile, health checker, wheelhouse of loopstream + dependencies.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("tracker.Containerfile", "grpc_health_check.py"):
        shutil.copy(CONTAINERS / name, ctx / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(ctx / "wheels"),
            f"{ROOT}[tracker,ops]",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # --format docker keeps the HEALTHCHECK (OCI images have no such field);
    # --layers=false leaves no intermediate images behind.
    _podman(
        env,
        "build",
        "--layers=false",
        "--format",
        "docker",
        "--build-arg",
        f"BASE_IMAGE={BASE}",
        "-f",
        str(ctx / "tracker.Containerfile"),
        "-t",
        IMAGE,
        str(ctx),
        timeout=900,
    )

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("pytest-token")
    (secrets / "token").chmod(0o644)
    grpc_port, metrics_port = _free_port(), _free_port()
    name = f"loopstream-tracker-pytest-{os.getpid()}"
    try:
        # As in the chart: read-only root, tmpfs /tmp, data volume, token file, non-root user.
        _podman(
            env,
            "run",
            "-d",
            "--name",
            name,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "-v",
            f"{name}-data:/data",
            "-v",
            f"{secrets}:/secrets:ro",
            "-p",
            f"127.0.0.1:{grpc_port}:50061",
            "-p",
            f"127.0.0.1:{metrics_port}:9102",
            IMAGE,
            "--token-file",
            "/secrets/token",
        )
        deadline = time.monotonic() + 90
        while True:
            res = run_check("--port", str(grpc_port), "--timeout", "2")
            if res.returncode == 0:
                break
            if time.monotonic() > deadline:
                logs = _podman(env, "logs", name, check=False)
                pytest.fail(f"no gRPC health answer: {res.stderr}\n{logs.stdout}{logs.stderr}")
            time.sleep(1)
        assert "SERVING" in res.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            assert b"loopstream_tracker_" in reply.read()
        # The image's own HEALTHCHECK (podman warns about systemd timers: harmless here).
        assert _podman(env, "healthcheck", "run", name, check=False).returncode == 0
        user = _podman(env, "inspect", name, "--format", "{{.Config.User}}").stdout.strip()
        assert user == "10001:10001"
        # Graceful SIGTERM: exits 0 well before podman's SIGKILL.
        _podman(env, "stop", "-t", "20", name)
        code = _podman(env, "inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        assert code == "0"
    finally:
        _podman(env, "rm", "-f", name, check=False)
        _podman(env, "volume", "rm", "-f", f"{name}-data", check=False)
        _podman(env, "rmi", "-f", IMAGE, check=False)
