"""The Triton pool's replicas, and pool-wide changes of the pipeline versions they serve.

Locally the replicas are a static list of ``host:port``; in a cluster they are the ready
endpoints of the Triton headless Service, read from its EndpointSlices through the Kubernetes API.
A version joins an A/B policy only after :func:`load_everywhere` has it READY on every replica:
a session assigned to it must find it whichever replica its stream lands on. Where the pool
restricts its admin APIs (``loopstream.serving.admin``), every call here carries the admin header.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import tritonclient.grpc as triton
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from tritonclient.utils import InferenceServerException

from loopstream.serving.admin import AdminHeader, SendAdminHeader
from loopstream.serving.versions import ready_versions, serve_versions

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
T = TypeVar("T")


class PoolError(RuntimeError):
    """Some replicas could not do what was asked; ``failures`` maps each one to the reason."""

    def __init__(self, action: str, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "\n".join(f"  {replica}: {reason}" for replica, reason in sorted(failures.items()))
        super().__init__(f"{action} failed:\n{lines}")


def static_replicas(spec: str) -> list[str]:
    """Replicas from a comma-separated ``host:port`` list, as flags and environment give them.

    >>> static_replicas("10.0.0.2:8001, 10.0.0.1:8001,10.0.0.2:8001")
    ['10.0.0.1:8001', '10.0.0.2:8001']
    """
    replicas = sorted({part.strip() for part in spec.split(",") if part.strip()})
    for replica in replicas:
        host, _, port = replica.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"replica {replica!r} is not host:port")
    return replicas


def replicas_from_endpoint_slices(
    slices: Iterable[k8s.V1EndpointSlice], port_name: str = "grpc"
) -> list[str]:
    """``host:port`` of every ready endpoint in a Service's EndpointSlices, on the named port.

    An endpoint whose readiness is unknown counts as ready (the API's documented reading);
    terminating ones do not. An address can appear in two slices while they are rebalanced,
    so the result is de-duplicated. IPv6 addresses are bracketed for gRPC targets.
    """
    replicas: set[str] = set()
    for endpoint_slice in slices:
        port = next((p.port for p in endpoint_slice.ports or [] if p.name == port_name), None)
        if port is None:
            continue
        ipv6 = endpoint_slice.address_type == "IPv6"
        for endpoint in endpoint_slice.endpoints or []:
            conditions = endpoint.conditions
            if conditions is not None and (conditions.ready is False or conditions.terminating):
                continue
            for address in endpoint.addresses:
                replicas.add(f"[{address}]:{port}" if ipv6 else f"{address}:{port}")
    return sorted(replicas)


def discover_replicas(service: str, namespace: str, port_name: str = "grpc") -> list[str]:
    """Ready replicas of a headless Service, from the Kubernetes API (in-cluster or kubeconfig)."""
    where = f"{namespace}/{service}"
    try:
        try:
            k8s_config.load_incluster_config()
        except k8s_config.ConfigException:
            k8s_config.load_kube_config()
        listing = k8s.DiscoveryV1Api().list_namespaced_endpoint_slice(
            namespace, label_selector=f"{SERVICE_NAME_LABEL}={service}"
        )
    except (k8s_config.ConfigException, k8s.ApiException) as exc:
        raise PoolError("discovery", {where: f"cannot list EndpointSlices: {exc}"}) from exc
    replicas = replicas_from_endpoint_slices(listing.items, port_name)
    if not replicas:
        raise PoolError("discovery", {where: f"no ready endpoint with a {port_name!r} port"})
    return replicas


def admin_client(replica: str, admin: AdminHeader | None) -> triton.InferenceServerClient:
    """A gRPC client of one replica that sends the admin header (if any) on every call."""
    client = triton.InferenceServerClient(replica)
    if admin is not None:
        client.register_plugin(SendAdminHeader(admin, "grpc"))
    return client


def served_versions(replica: str, pipeline: str, admin: AdminHeader | None = None) -> list[int]:
    """Versions of ``pipeline`` READY on one replica."""
    with admin_client(replica, admin) as client:
        return ready_versions(client, pipeline)


def _add_version(replica: str, pipeline: str, version: int, admin: AdminHeader | None) -> None:
    with admin_client(replica, admin) as client:
        serve_versions(client, pipeline, sorted({*ready_versions(client, pipeline), version}))
        for model in (pipeline, f"{pipeline}_core"):  # the pipeline calls its core at the same version
            if version not in ready_versions(client, model):
                raise RuntimeError(f"{model} version {version} is not READY after loading")


def _on_every_replica(replicas: list[str], task: Callable[[str], T]) -> tuple[dict[str, T], dict[str, str]]:
    """Run ``task(replica)`` on all replicas at once: (results, reasons of the failures)."""
    results: dict[str, T] = {}
    failures: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(len(replicas), 1)) as executor:
        futures = {replica: executor.submit(task, replica) for replica in replicas}
    for replica, future in futures.items():
        try:
            results[replica] = future.result()
        except InferenceServerException as exc:  # unreachable, or the server refused
            failures[replica] = exc.message()
        except RuntimeError as exc:  # serve_versions: the version did not load
            failures[replica] = str(exc)
    return results, failures


def load_everywhere(
    replicas: list[str], pipeline: str, version: int, admin: AdminHeader | None = None
) -> None:
    """Add ``version`` of ``pipeline`` on every replica, keeping the versions each already serves.

    Returns only once every replica reports it READY. Otherwise raises PoolError naming the
    replicas that failed; replicas that succeeded keep the extra version (harmless: no session
    is assigned to it until this returns, which is the caller's rule).
    """
    action = f"loading {pipeline} version {version}"
    if not replicas:
        raise PoolError(action, {"(pool)": "no replicas given"})
    _, failures = _on_every_replica(replicas, lambda replica: _add_version(replica, pipeline, version, admin))
    if failures:
        raise PoolError(action, failures)


def missing_everywhere(
    replicas: list[str], pipeline: str, versions: list[int], admin: AdminHeader | None = None
) -> dict[str, str]:
    """Replicas that lack any of ``versions`` READY, each with why: the guard before a policy change."""
    if not replicas:
        return {"(pool)": "no replicas given"}
    served, failures = _on_every_replica(replicas, lambda replica: served_versions(replica, pipeline, admin))
    lacking = {r: sorted(set(versions) - set(v)) for r, v in served.items()}
    missing = {r: f"serves versions {served[r]}, lacks {lack}" for r, lack in lacking.items() if lack}
    return {**failures, **missing}
