"""The admin header: what a client must send for Triton's control APIs, and what it must not need.

Any client that reaches Triton's gRPC or HTTP port could otherwise unload the models. tritonserver
(2.51) restricts groups of its APIs to requests that carry one header (``--grpc-restricted-protocol``
/ ``--http-restricted-api``); inference, health and metadata stay open, so microscope clients need
no secret, while ``loopstream-rollout`` sends the header on every call. In Kubernetes the key and
value come from a Secret (helm/loopstream, ``triton.admin``).

Examples
--------
>>> header = AdminHeader("loopstream-admin", "0123456789abcdef")
>>> header.server_args(("model-repository", "logging"))[0]
'--grpc-restricted-protocol=model-repository,logging:loopstream-admin=0123456789abcdef'
>>> header.headers("grpc")
{'triton-grpc-protocol-loopstream-admin': '0123456789abcdef'}
>>> AdminHeader("Bad Key", "x")
Traceback (most recent call last):
...
ValueError: admin header key 'Bad Key' must be lowercase letters, digits and '-' (a gRPC metadata key)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tritonclient._plugin import InferenceServerClientPlugin

# Triton's API groups that change or reveal the server's set-up; the rest (inference, health,
# metadata, statistics, shared-memory) is what microscope clients use.
ADMIN_APIS = ("model-repository", "model-config", "trace", "logging")
API_GROUPS = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)
DEFAULT_KEY = "loopstream-admin"
GRPC_PREFIX = "triton-grpc-protocol-"
PROTOCOLS = ("grpc", "http")
_KEY = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_VALUE = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")


@dataclass(frozen=True)
class AdminHeader:
    """One header (``key: value``) that Triton requires on its admin APIs."""

    key: str
    value: str

    def __post_init__(self) -> None:
        if not _KEY.fullmatch(self.key) or self.key.startswith("grpc-"):
            raise ValueError(
                f"admin header key {self.key!r} must be lowercase letters, digits and '-' "
                "(a gRPC metadata key)"
            )
        if not _VALUE.fullmatch(self.value):
            raise ValueError(
                "the admin header value must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ + / - "
                "(e.g. openssl rand -hex 24)"
            )

    @classmethod
    def optional(cls, key: str, value: str) -> AdminHeader | None:
        """The header from a flag pair, or None when no value is given (admin APIs open)."""
        return cls(key, value) if value else None

    def headers(self, protocol: str) -> dict[str, str]:
        """The header as a client sends it: Triton's gRPC endpoint expects the key with its
        ``triton-grpc-protocol-`` prefix, the HTTP endpoint the key itself."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        return {f"{GRPC_PREFIX}{self.key}" if protocol == "grpc" else self.key: self.value}

    def server_args(self, apis: tuple[str, ...] = ADMIN_APIS) -> list[str]:
        """tritonserver flags restricting ``apis`` on both protocols to requests with this header."""
        unknown = sorted(set(apis) - set(API_GROUPS))
        if unknown or not apis:
            raise ValueError(f"unknown Triton API groups {unknown}; choose from {list(API_GROUPS)}")
        restriction = f"{','.join(apis)}:{self.key}={self.value}"
        return [f"--grpc-restricted-protocol={restriction}", f"--http-restricted-api={restriction}"]


class SendAdminHeader(InferenceServerClientPlugin):
    """A tritonclient plugin adding the admin header to every call of the client it is registered on."""

    def __init__(self, header: AdminHeader, protocol: str = "grpc") -> None:
        self._headers = header.headers(protocol)

    def __call__(self, request) -> None:  # request: tritonclient's Request
        request.headers.update(self._headers)
