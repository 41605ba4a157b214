"""``loopstream-serve``: run the local (CPU) Triton pool on this machine until SIGTERM / Ctrl-C.

Every flag has an environment variable LOOPSTREAM_SERVE_<FLAG>. The GPU flavour runs the NGC
image's own ``tritonserver`` instead (see helm/), with the same model repository layout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton


def _env(flag: str, default: str) -> str:
    return os.environ.get(f"LOOPSTREAM_SERVE_{flag.upper().replace('-', '_')}", default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopstream-serve", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path(_env("repository", str(REPOSITORY))))
    parser.add_argument("--host", default=_env("host", "127.0.0.1"), help="address to listen on")
    parser.add_argument("--grpc-port", type=int, default=int(_env("grpc-port", "8001")))
    parser.add_argument("--http-port", type=int, default=int(_env("http-port", "8000")))
    parser.add_argument("--metrics-port", type=int, default=int(_env("metrics-port", "8002")))
    parser.add_argument(
        "--model-control",
        choices=["none", "explicit", "poll"],
        default=_env("model-control", "none"),
        help="explicit: load/unload model versions at run time through the repository API",
    )
    parser.add_argument(
        "--load-model", action="append", default=[], help="with explicit control: a model to load at start"
    )
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=int(_env("ort-threads", "0")),
        help="ONNX Runtime threads per core-model instance (0 = the repository's setting)",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(_env("cache-dir", ".cache/triton")))
    parser.add_argument("--log", type=Path, default=None, help="tritonserver log file (default: stdout)")
    parser.add_argument("--ready-timeout-s", type=float, default=float(_env("ready-timeout-s", "300")))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.ort_threads > 0:
        os.environ["LOOPSTREAM_ORT_THREADS"] = str(args.ort_threads)  # read by the core models
    options = TritonOptions(
        repository=args.repository.resolve(),
        host=args.host,
        ports=TritonPorts(args.grpc_port, args.http_port, args.metrics_port),
        model_control=args.model_control,
        load_models=tuple(args.load_model),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server = start_triton(options, args.cache_dir, args.log, timeout_s=args.ready_timeout_s)
    except (RuntimeError, TimeoutError) as exc:
        print(f"loopstream-serve: {exc}", file=sys.stderr)
        return 1
    listening = {
        "event": "listening",
        "grpc": f"{args.host}:{args.grpc_port}",
        "http": f"{args.host}:{args.http_port}",
        "metrics": f"http://{args.host}:{args.metrics_port}/metrics",
        "repository": str(options.repository),
    }
    print(json.dumps(listening), flush=True)
    while not stop.wait(0.5):
        if server.process is not None and server.process.poll() is not None:
            print(f"loopstream-serve: tritonserver exited with {server.process.returncode}", file=sys.stderr)
            return 1
    server.stop()
    print(json.dumps({"event": "stopped"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
