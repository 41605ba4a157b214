"""``loopstream-serve``: run the local (CPU) Triton pool on this machine until SIGTERM / Ctrl-C.

Every flag has an environment variable LOOPSTREAM_SERVE_<FLAG>. The GPU flavour runs the NGC
image's own ``tritonserver`` instead (see helm/), with the same model repository layout.
A port of 0 is a free port chosen at start; the JSON line printed once the models are ready says
which. With ``--admin-header-value`` (better: LOOPSTREAM_SERVE_ADMIN_HEADER_VALUE) the admin
APIs (model load/unload, configs, logging, trace) need that header; inference stays open.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from loopstream.core.env_flags import EnvFlags
from loopstream.serving.admin import ADMIN_APIS, API_GROUPS, DEFAULT_KEY, AdminHeader
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton

ENV_PREFIX = "LOOPSTREAM_SERVE_"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopstream-serve", description=__doc__.splitlines()[0])
    flags = EnvFlags(parser, ENV_PREFIX)
    flags.add("--repository", type=Path, default=REPOSITORY)
    flags.add("--host", default="127.0.0.1", help="address to listen on")
    for name, default in (("--grpc-port", 8001), ("--http-port", 8000), ("--metrics-port", 8002)):
        flags.add(name, type=int, default=default, help="0: a free port")
    flags.add(
        "--model-control",
        choices=["none", "explicit", "poll"],
        default="none",
        help="explicit: load/unload model versions at run time through the repository API",
    )
    parser.add_argument(
        "--load-model", action="append", default=[], help="with explicit control: a model to load at start"
    )
    flags.add(
        "--ort-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per core-model instance (0 = the repository's setting)",
    )
    flags.add("--admin-header-key", default=DEFAULT_KEY, help="the admin header's name")
    flags.add(
        "--admin-header-value",
        default="",
        help="the admin header's secret value; empty: admin APIs open to every client",
    )
    flags.add(
        "--admin-apis",
        default=",".join(ADMIN_APIS),
        help=f"Triton API groups that need the header, of {','.join(API_GROUPS)}",
    )
    flags.add(
        "--cache-dir",
        type=Path,
        default=Path(".cache/triton"),
        help="one server's working directory; what a killed server left there is removed at start",
    )
    parser.add_argument("--log", type=Path, default=None, help="tritonserver log file (default: stdout)")
    flags.add("--ready-timeout-s", type=float, default=300.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="loopstream-serve: %(message)s", stream=sys.stderr)
    if args.ort_threads > 0:
        os.environ["LOOPSTREAM_ORT_THREADS"] = str(args.ort_threads)  # read by the core models
    ports = TritonPorts(args.grpc_port, args.http_port, args.metrics_port)
    if not all(0 <= port <= 65535 for port in (ports.grpc, ports.http, ports.metrics)):
        parser.error(f"ports must be 0 (a free one) to 65535, got {ports}")
    try:
        admin_header = AdminHeader.optional(args.admin_header_key, args.admin_header_value)
        admin_apis = tuple(a.strip() for a in args.admin_apis.split(",") if a.strip())
        if admin_header is not None:
            admin_header.server_args(admin_apis)  # checks the API group names now
    except ValueError as exc:
        parser.error(str(exc))
    options = TritonOptions(
        repository=args.repository.resolve(),
        host=args.host,
        ports=ports.with_free_ports(args.host),
        model_control=args.model_control,
        load_models=tuple(args.load_model),
        admin_header=admin_header,
        admin_apis=admin_apis,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = start_triton(options, args.cache_dir, args.log, timeout_s=args.ready_timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        print(f"loopstream-serve: {exc}", file=sys.stderr)
        return 1
    assert server.process is not None  # start_triton returns a started server
    listening = {
        "event": "listening",
        "grpc": f"{args.host}:{options.ports.grpc}",
        "http": f"{args.host}:{options.ports.http}",
        "metrics": f"http://{args.host}:{options.ports.metrics}/metrics",
        "repository": str(options.repository),
        "pid": server.process.pid,
        "admin_apis_restricted": list(admin_apis) if admin_header else [],
    }
    print(json.dumps(listening), flush=True)
    while not stop.wait(0.5):
        if server.process is not None and server.process.poll() is not None:
            code = server.process.returncode
            server.stop()  # its Python-backend stubs outlive it otherwise
            print(f"loopstream-serve: tritonserver exited with {code}", file=sys.stderr)
            return 1
    server.stop()
    print(json.dumps({"event": "stopped"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
