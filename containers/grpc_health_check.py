#!/usr/bin/env python3
"""Ask a gRPC server for its health (grpc.health.v1) and exit 0 only if SERVING.

Used as the tracker image's HEALTHCHECK and, when the tracker serves TLS, as
its Kubernetes exec probe (kubelet's built-in gRPC probe cannot speak TLS).

    loopstream-healthcheck --port 50061
    loopstream-healthcheck --port 50061 --ca /tls/ca.crt --server-name my-tracker

Exit codes: 0 serving, 1 not serving / unreachable, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LOOPSTREAM_TRACKER_PORT", "50061")))
    parser.add_argument("--service", default="", help='health service name ("" = the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    parser.add_argument("--ca", help="PEM CA bundle: use TLS and trust these roots")
    parser.add_argument("--server-name", help="TLS name to verify instead of --host")
    args = parser.parse_args(argv)

    target = f"{args.host}:{args.port}"
    if args.ca:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"unhealthy: {target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
