"""Run the local (CPU) Triton Inference Server from the ``nvidia-pytriton`` wheel.

That wheel bundles ``tritonserver`` with the Python backend only; models that need ONNX Runtime
run it inside Python-backend models. Three facts of this build shape the code (DESIGN.md, 3):
the backend stub must sit in the backend directory, it runs the first ``python3`` on PATH (so our
interpreter's bin goes first), and it links ``libpython3.X.so`` (so the interpreter's LIBDIR goes
on LD_LIBRARY_PATH for machines without a system copy).
"""

from __future__ import annotations

import logging
import os
import sys
import sysconfig
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from loopstream.serving.admin import ADMIN_APIS, AdminHeader
from loopstream.serving.leftovers import claim, remove_leftovers, shm_prefix
from loopstream.serving.processes import ServiceProcess, free_port

log = logging.getLogger(__name__)
REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@dataclass(frozen=True)
class TritonPorts:
    grpc: int
    http: int
    metrics: int

    @classmethod
    def ephemeral(cls) -> TritonPorts:
        return cls(free_port(), free_port(), free_port())

    def with_free_ports(self, host: str = "127.0.0.1") -> TritonPorts:
        """These ports, each 0 replaced by a port free now: tritonserver cannot bind port 0 itself
        (it refuses two listeners on 127.0.0.1:0, and could not report what it bound).

        >>> ports = TritonPorts(8001, 0, 0).with_free_ports()
        >>> ports.grpc, ports.http > 0, ports.metrics not in (0, ports.http)
        (8001, True, True)
        """
        ports = [self.grpc, self.http, self.metrics]
        for i in range(len(ports)):
            while ports[i] == 0:
                candidate = free_port(host)
                ports[i] = 0 if candidate in ports else candidate
        return TritonPorts(*ports)


@dataclass(frozen=True)
class TritonOptions:
    repository: Path = REPOSITORY
    host: str = "127.0.0.1"
    ports: TritonPorts = field(default_factory=lambda: TritonPorts(8001, 8000, 8002))
    model_control: str = "none"  # "explicit" loads only --load-model names and allows load/unload
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    admin_header: AdminHeader | None = None  # when set, ``admin_apis`` need it (inference does not)
    admin_apis: tuple[str, ...] = ADMIN_APIS


def pytriton_root() -> Path:
    """Where the ``nvidia-pytriton`` wheel keeps its ``tritonserver`` build."""
    try:
        import pytriton
    except ImportError as exc:  # the local flavour needs the wheel; say how to get it
        raise RuntimeError(
            "tritonserver not found: install the serving extra (scripts/bootstrap serve)"
        ) from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def backend_directory(cache_dir: Path) -> Path:
    """A backend directory whose ``python`` backend holds the stub for this interpreter.

    Built once in ``cache_dir`` from symbolic links into the wheel, so the installed wheel stays
    untouched and the stub still finds its bundled libraries (its RPATH is relative to the real file).
    """
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise RuntimeError(f"the nvidia-pytriton wheel has no Python-backend stub for Python {version}")
    python_dir = cache_dir.resolve() / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [*(root / "backends" / "python").glob("*.*"), stub]:
        target = python_dir / source.name
        if source.is_file():
            target.unlink(missing_ok=True)  # the wheel may have moved since the last run
            target.symlink_to(source)
    return python_dir.parent


def server_environment() -> dict[str, str]:
    """Environment for tritonserver: our interpreter first on PATH, its libpython findable."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
    return env


def server_argv(options: TritonOptions, cache_dir: Path) -> list[str]:
    backends = backend_directory(cache_dir)
    argv = [
        str(pytriton_root() / "bin" / "tritonserver"),
        f"--model-repository={options.repository}",
        f"--backend-directory={backends}",
        f"--grpc-address={options.host}",
        f"--http-address={options.host}",
        f"--metrics-address={options.host}",
        f"--grpc-port={options.ports.grpc}",
        f"--http-port={options.ports.http}",
        f"--metrics-port={options.ports.metrics}",
        "--disable-auto-complete-config",
        f"--model-control-mode={options.model_control}",
        f"--log-verbose={options.log_verbose}",
        # Region names that say whose they are, so a later start can remove a killed server's.
        f"--backend-config=python,shm-region-prefix-name={shm_prefix(cache_dir)}",
    ]
    argv += [f"--load-model={name}" for name in options.load_models]
    if options.admin_header is not None:
        argv += options.admin_header.server_args(options.admin_apis)
    return argv


def start_triton(
    options: TritonOptions, cache_dir: Path, log_path: Path | None = None, timeout_s: float = 120.0
) -> ServiceProcess:
    """Start tritonserver and return once every model it was asked to load is ready.

    The server owns ``cache_dir`` while it runs; whatever a killed server left there (its
    Python-backend stubs, its /dev/shm regions) is removed first (``loopstream.serving.leftovers``).
    """
    lock = claim(cache_dir)
    try:
        cleaned = remove_leftovers(cache_dir)
        process = ServiceProcess(
            "tritonserver",
            server_argv(options, cache_dir),
            env=server_environment(),
            log_path=log_path,
            lock=lock,
        )
    except BaseException:
        lock.close()
        raise
    if cleaned.processes or cleaned.shm_regions:
        log.warning(
            "removed what a killed server left in %s: processes %s, /dev/shm regions %s",
            cache_dir,
            cleaned.processes,
            cleaned.shm_regions,
        )
    process.start()
    url = f"http://{options.host}:{options.ports.http}/v2/health/ready"
    process.wait_ready(lambda: urllib.request.urlopen(url, timeout=1).status == 200, timeout_s)
    return process
