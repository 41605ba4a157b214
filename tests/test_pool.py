"""The Triton pool: replicas from EndpointSlices, and versions loaded on every replica (real servers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client as k8s

from loopstream.ops import pool, rollout_cli
from loopstream.ops.pool import PoolError, load_everywhere, replicas_from_endpoint_slices, served_versions
from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.repository import add_version, versions_of
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton
from loopstream.tracker.rollout import PolicyFile, RolloutPolicy, write_policy

PIPELINE = "loops_semantic"
ONNX = REPOSITORY / f"{PIPELINE}_core" / "1" / "model.onnx"
SHIPPED_SPEC = REPOSITORY / PIPELINE / "1" / "pipeline.json"


def _endpoint(address: str, ready: bool | None = True, terminating: bool | None = None) -> k8s.V1Endpoint:
    return k8s.V1Endpoint(
        addresses=[address], conditions=k8s.V1EndpointConditions(ready=ready, terminating=terminating)
    )


def _slice(name: str, endpoints: list, ports: dict[str, int], address_type: str = "IPv4"):
    return k8s.V1EndpointSlice(
        address_type=address_type,
        metadata=k8s.V1ObjectMeta(name=name, labels={pool.SERVICE_NAME_LABEL: "loopstream-triton-headless"}),
        endpoints=endpoints,
        ports=[k8s.DiscoveryV1EndpointPort(name=n, port=p, protocol="TCP") for n, p in ports.items()],
    )


def test_replicas_are_the_ready_endpoints_on_the_grpc_port() -> None:
    slices = [
        _slice(
            "triton-abc12",
            [
                _endpoint("10.1.0.7"),
                _endpoint("10.1.0.8", ready=False),  # models still loading
                _endpoint("10.1.0.9", ready=None),  # readiness unknown: the API says treat as ready
                _endpoint("10.1.0.10", ready=True, terminating=True),  # draining before shutdown
            ],
            {"http": 8000, "grpc": 8001},
        ),
        _slice("triton-def34", [_endpoint("10.1.0.7"), _endpoint("10.1.0.11")], {"grpc": 8001}),  # rebalanced
        _slice("triton-v6", [_endpoint("fd00::5")], {"grpc": 8001}, address_type="IPv6"),
        _slice("triton-nogrpc", [_endpoint("10.1.0.12")], {"http": 8000}),
        _slice("triton-empty", None, {"grpc": 8001}),  # a Service with no pods yet
    ]
    assert replicas_from_endpoint_slices(slices) == [
        "10.1.0.11:8001",
        "10.1.0.7:8001",
        "10.1.0.9:8001",
        "[fd00::5]:8001",
    ]
    assert replicas_from_endpoint_slices(slices, port_name="http") == [
        "10.1.0.12:8000",
        "10.1.0.7:8000",
        "10.1.0.9:8000",
    ]


def test_static_replicas_must_be_host_and_port() -> None:
    assert pool.static_replicas("a:8001,b:8001") == ["a:8001", "b:8001"]
    with pytest.raises(ValueError, match="'triton' is not host:port"):
        pool.static_replicas("triton")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory):
    """Two real tritonservers, each with its own repository holding only version 1 at start."""
    if not ONNX.exists():
        pytest.skip(f"{ONNX} is not there yet (the shipped model is still being trained)")
    spec = PipelineSpec.read(SHIPPED_SPEC) if SHIPPED_SPEC.exists() else PipelineSpec()
    root = tmp_path_factory.mktemp("pool")
    processes, urls = [], {}
    try:
        for name in ("a", "b"):
            repository = root / name / "repository"
            add_version(repository, PIPELINE, spec, ONNX, 1)
            options = TritonOptions(
                repository=repository,
                ports=TritonPorts.ephemeral(),
                model_control="explicit",
                load_models=(f"{PIPELINE}_core", PIPELINE),
            )
            processes.append(start_triton(options, root / name / "cache", root / name / "tritonserver.log"))
            urls[name] = f"127.0.0.1:{options.ports.grpc}"
        yield {"urls": urls, "root": root, "spec": spec}
    finally:
        for process in processes:
            process.stop()


def _publish(replicas: dict, name: str, version: int) -> None:
    """Put ``version`` into one replica's model repository (as a rollout pipeline would)."""
    repository = replicas["root"] / name / "repository"
    if version not in versions_of(repository, PIPELINE):
        add_version(
            repository,
            PIPELINE,
            PipelineSpec(**{**replicas["spec"].__dict__, "threshold": 0.6}),
            ONNX,
            version,
        )


def test_load_everywhere_names_the_replica_that_lacks_the_version(replicas: dict) -> None:
    a, b = replicas["urls"]["a"], replicas["urls"]["b"]
    _publish(replicas, "a", 2)  # only replica a's repository has version 2 so far
    with pytest.raises(PoolError) as failure:
        load_everywhere([a, b], PIPELINE, 2)
    assert list(failure.value.failures) == [b]
    assert b in str(failure.value) and "versions [2]" in str(failure.value)
    assert served_versions(b, PIPELINE) == [1], "the failing replica keeps serving what it served"

    _publish(replicas, "b", 2)
    load_everywhere([a, b], PIPELINE, 2)
    assert served_versions(a, PIPELINE) == [1, 2] and served_versions(b, PIPELINE) == [1, 2]


def test_the_rollout_cli_changes_the_policy_only_for_versions_served_everywhere(
    replicas: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name in ("a", "b"):
        _publish(replicas, name, 2)
    path = tmp_path / "ab-policy.json"
    write_policy(path, RolloutPolicy(PIPELINE, {"1": 1.0}))
    flags = ["--policy-file", str(path), "--replicas", ",".join(replicas["urls"].values())]

    assert rollout_cli.main([*flags, "promote", "3"]) == 1  # in no repository: never loadable
    assert "lacks [3]" in capsys.readouterr().err and PolicyFile(path).current().arms == {"1": 1.0}
    assert rollout_cli.main([*flags, "load", "2"]) == 0
    assert rollout_cli.main([*flags, "set-weights", "1=0.9", "2=0.1", "--shadow", "2=0.05"]) == 0
    assert PolicyFile(path).current().to_dict() == {
        "pipeline": PIPELINE,
        "arms": {"1": 0.9, "2": 0.1},
        "shadow": {"version": "2", "fraction": 0.05},
    }
    assert rollout_cli.main([*flags, "promote", "2"]) == 0
    assert PolicyFile(path).current().arms == {"2": 1.0}
    assert rollout_cli.main([*flags, "rollback", "1"]) == 0
    assert PolicyFile(path).current() == RolloutPolicy(PIPELINE, {"1": 1.0})
    capsys.readouterr()
    assert rollout_cli.main([*flags, "status"]) == 0
    out = capsys.readouterr().out
    assert all(f"replica {url}: serves [1, 2]" in out for url in replicas["urls"].values())
