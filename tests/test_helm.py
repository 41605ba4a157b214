"""The Helm chart (helm/loopstream), rendered and linted by real Helm.

helm-python-sdk (import ``helm_python``) binds the Helm v4 Go SDK, so these
tests render exactly what ``helm template`` / ``helm install`` would, with no
helm binary and no cluster. Every rendered manifest is then checked against
the official Kubernetes OpenAPI schemas by ``kubernetes-validate --strict``.

Scenarios are the chart's ``ci/*-values.yaml`` files (the chart-testing
convention): CPU-only dev, one GPU node, autoscaled pool with monitoring,
object-storage model repository.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed (pip install -e .[dev])")
kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install -e .[dev])"
)
from helm_python import _native  # noqa: E402  (after the importorskip guard)

from loopstream.serving.admin import AdminHeader  # noqa: E402
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton  # noqa: E402
from loopstream.tracker.rollout import RolloutPolicy, Shadow  # noqa: E402
from tests.conftest import infer_detections  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "helm" / "loopstream"
SCENARIOS = {
    "cpu-dev": CHART / "ci" / "cpu-dev-values.yaml",
    "gpu-node": CHART / "ci" / "gpu-node-values.yaml",
    "autoscaled-monitoring": CHART / "ci" / "autoscaled-monitoring-values.yaml",
    "object-storage": CHART / "ci" / "object-storage-values.yaml",
}
RELEASE, NAMESPACE = "ls", "tem"
PREFIX = f"{RELEASE}-loopstream"
MONITORING_APIS = ["monitoring.coreos.com/v1", "cert-manager.io/v1"]
# Custom resources the chart may render; kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "Certificate"}
# Kubernetes versions checked: the oldest the chart supports and the newest
# kubernetes-validate ships schemas for.
KUBE_VERSIONS = ["1.29.0", kv.utils.latest_version()]

# Tracker metric names the Grafana dashboard queries (the tracker must export them).
TRACKER_METRICS = {
    "loopstream_tracker_frames_total",  # counter {microscope, arm, outcome}: frames received
    "loopstream_tracker_detections_total",  # counter {microscope, arm}: loops in accepted frames
    "loopstream_tracker_frame_latency_seconds",  # histogram: arrival -> durable acknowledgement
}
TRITON_METRICS = {
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_gpu_utilization",
}


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def chart():
    return helm.Chart.load(CHART)


def scenario_values(name: str | None) -> dict[str, Any]:
    return yaml.safe_load(SCENARIOS[name].read_text()) if name else {}


def render(
    chart, values: dict[str, Any] | None = None, api_versions: list[str] | None = None
) -> dict[str, str]:
    """Render like ``helm template --api-versions ...``.

    Chart.render() does not expose Helm's extra API versions, but the native
    render call accepts them (``api_versions``), which is what lets us test the
    ``.Capabilities.APIVersions.Has`` branches offline.
    """
    if not api_versions:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": api_versions}
    raw = _native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts))
    return json.loads(raw)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(objs, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs, kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Does a matchLabels-only LabelSelector select these labels?"""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def triton(objs) -> dict[str, Any]:
    return one(objs, "Deployment", f"{PREFIX}-triton")


def tracker(objs) -> dict[str, Any]:
    return one(objs, "StatefulSet", f"{PREFIX}-tracker")


ALL_CASES = [None, *SCENARIOS]


@pytest.fixture(scope="module", params=ALL_CASES, ids=lambda n: n or "default")
def case(request, chart):
    """(scenario name, objects without monitoring CRDs, objects with them)."""
    values = scenario_values(request.param)
    return request.param, objects(render(chart, values)), objects(render(chart, values, MONITORING_APIS))


# ------------------------------------------------------- every scenario


def test_every_documented_scenario_has_a_values_file():
    assert sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")) == sorted(
        p.name for p in SCENARIOS.values()
    )


def test_renders_core_objects_once(case):
    _, objs, objs_mon = case
    for o in (objs, objs_mon):
        keys = [(x["kind"], x["metadata"]["name"]) for x in o]
        assert len(keys) == len(set(keys)), "duplicate objects"
        triton(o), tracker(o)
        one(o, "Service", f"{PREFIX}-triton")
        one(o, "Service", f"{PREFIX}-triton-headless")
        one(o, "Service", f"{PREFIX}-tracker")
        one(o, "ConfigMap", f"{PREFIX}-tracker-ab-policy")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_passes_kubernetes_validate_strict(case, version):
    _, objs, objs_mon = case
    checked = 0
    for obj in objs + objs_mon:
        if obj["kind"] in CRD_KINDS:
            continue  # no upstream schema; structure checked in the monitoring tests
        try:
            kv.validate(obj, version, strict=True)
        except kv.utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} invalid for {version}: {path}: {exc.message}"
            )
        checked += 1
    assert checked >= 12


def test_kubernetes_validate_strict_rejects_a_broken_manifest(chart):
    """Guard against a validator that silently accepts anything."""
    deployment = copy.deepcopy(triton(objects(render(chart))))
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1  # no such field
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(deployment, KUBE_VERSIONS[0], strict=True)
    deployment = copy.deepcopy(triton(objects(render(chart))))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(deployment, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", ALL_CASES, ids=lambda n: n or "default")
@pytest.mark.parametrize("kube_version", ["v1.29.0", f"v{KUBE_VERSIONS[-1]}"])
def test_helm_lint_strict_reports_no_error(name, kube_version):
    report = helm.lint(CHART, scenario_values(name), strict=True, kube_version=kube_version)
    assert report["errors"] == []
    bad = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
    assert bad == []


def test_helm_lint_flags_a_broken_values_file():
    report = helm.lint(CHART, {"triton": {"replicas": -3}}, strict=True)
    assert report["errors"] or any(m["severity"] >= 2 for m in report["messages"])


# ---------------------------------------------------------------- Triton


def test_default_triton_pool_is_gpu_with_explicit_model_control(chart):
    objs = objects(render(chart))
    dep = triton(objs)
    spec = dep["spec"]["template"]["spec"]
    c = container(dep, "tritonserver")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    args = c["args"]
    assert args[0] == "tritonserver"  # NGC entrypoint kept in front
    assert "command" not in c
    for expected in (
        "--model-repository=/models",
        "--model-control-mode=explicit",
        "--load-model=loops_semantic",
        "--load-model=loops_instance",
        "--grpc-port=8001",
        "--http-port=8000",
        "--metrics-port=8002",
        "--allow-metrics=true",
    ):
        assert expected in args
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert spec["automountServiceAccountToken"] is False
    assert dep["spec"]["replicas"] == 1


@pytest.mark.triton
def test_the_pools_model_arguments_serve_every_listed_pipeline(chart, tmp_path):
    # The chart's --model-control-mode and --load-model arguments, on a real tritonserver (the
    # local flavour of the shipped repository): each listed pipeline answers a frame, so none was
    # loaded without the network it calls.
    pipelines = ["loops_semantic", "loops_instance_ti"]
    pool = triton(objects(render(chart, {"triton": {"models": pipelines}})))
    args = container(pool, "tritonserver")["args"]
    assert "--model-control-mode=explicit" in args
    options = TritonOptions(
        repository=REPOSITORY,
        ports=TritonPorts.ephemeral(),
        model_control="explicit",
        load_models=tuple(a.removeprefix("--load-model=") for a in args if a.startswith("--load-model=")),
    )
    server = start_triton(options, tmp_path / "cache", tmp_path / "tritonserver.log", timeout_s=300)
    try:
        frame = np.random.default_rng(0).integers(0, 4000, (256, 256), dtype=np.uint16)
        for pipeline in pipelines:
            assert infer_detections(f"127.0.0.1:{options.ports.grpc}", pipeline, frame, "").shape[1] == 11
    finally:
        server.stop()


def test_triton_dev_shm_is_memory_backed_and_sized(chart):
    for name in ALL_CASES:
        dep = triton(objects(render(chart, scenario_values(name))))
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(dep, "tritonserver")["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert shm["sizeLimit"] == (
            scenario_values(name).get("triton", {}).get("shm", {}).get("sizeLimit", "4Gi")
        )


def test_triton_probes_survive_long_model_loads(chart):
    c = container(triton(objects(render(chart))), "tritonserver")
    startup, ready, live = c["startupProbe"], c["readinessProbe"], c["livenessProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert ready["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert live["httpGet"]["path"] == "/v2/health/live"
    # Minutes of model loading (TensorRT builds) must not get the pod killed.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 10 * 60
    assert "initialDelaySeconds" not in live  # liveness starts only after the startup probe passed


def test_triton_shutdown_outlasts_exit_timeout(chart):
    dep = triton(objects(render(chart)))
    c = container(dep, "tritonserver")
    exit_timeout = int(next(a for a in c["args"] if a.startswith("--exit-timeout-secs=")).split("=")[1])
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > exit_timeout + pre_stop


def test_cpu_dev_has_no_gpu_anywhere(chart):
    rendered = render(chart, scenario_values("cpu-dev"))
    assert "nvidia.com/gpu" not in "".join(rendered.values())
    objs = objects(rendered)
    c = container(triton(objs), "tritonserver")
    assert "--allow-gpu-metrics=false" in c["args"]
    assert find(objs, "PodDisruptionBudget") == []


def test_gpu_node_scenario_pins_gpu_nodes_and_mounts_pvc_repository(chart):
    objs = objects(render(chart, scenario_values("gpu-node")))
    dep = triton(objs)
    spec = dep["spec"]["template"]["spec"]
    c = container(dep, "tritonserver")
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["model-repository"]["persistentVolumeClaim"] == {
        "claimName": "loopstream-models",
        "readOnly": True,
    }
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model-repository")
    assert (mount["mountPath"], mount["subPath"], mount["readOnly"]) == ("/models", "gpu", True)
    assert "--model-repository=/models" in c["args"]


def test_object_storage_scenario_reads_s3_with_secret_credentials(chart):
    objs = objects(render(chart, scenario_values("object-storage")))
    c = container(triton(objs), "tritonserver")
    assert (
        "--model-repository=s3://https://minio.facility.example:9000/loopstream/model_repository" in c["args"]
    )
    assert c["envFrom"] == [{"secretRef": {"name": "loopstream-s3"}}]
    assert all(m["name"] != "model-repository" for m in c["volumeMounts"])
    assert triton(objs)["spec"]["replicas"] == 2


def test_gcs_repository_mounts_service_account_key(chart):
    values = {
        "triton": {
            "modelRepository": {
                "source": "gcs",
                "objectStorage": {"url": "gs://tem-models/repo", "existingSecret": "gcs-key"},
            }
        }
    }
    dep = triton(objects(render(chart, values)))
    c = container(dep, "tritonserver")
    assert "--model-repository=gs://tem-models/repo" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/loopstream/gcs/credentials.json"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["gcs-credentials"]["secret"]["secretName"] == "gcs-key"


def test_services_headless_for_client_side_balancing(chart):
    objs = objects(render(chart))
    pod_labels = triton(objs)["spec"]["template"]["metadata"]["labels"]
    headless = one(objs, "Service", f"{PREFIX}-triton-headless")
    normal = one(objs, "Service", f"{PREFIX}-triton")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is False
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]}["grpc"] == 8001
    assert "clusterIP" not in normal["spec"]
    assert {p["name"] for p in normal["spec"]["ports"]} == {"http", "grpc", "metrics"}
    for svc in (headless, normal):
        assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    # The tracker discovers the pool through the headless Service's EndpointSlices.
    env = {e["name"]: e.get("value") for e in container(tracker(objs), "tracker")["env"]}
    assert env["LOOPSTREAM_TRITON_SERVICE"] == headless["metadata"]["name"]


def test_pdb_selects_triton_pods(chart):
    objs = objects(render(chart))
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": triton(objs)["spec"]["selector"]["matchLabels"]},
    }
    pdb = one(objects(render(chart, scenario_values("autoscaled-monitoring"))), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]


# ------------------------------------------------------------ autoscaling


def adapter_rules(objs) -> list[dict[str, Any]]:
    cm = one(objs, "ConfigMap", f"{PREFIX}-prometheus-adapter-rules")
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


def test_hpa_and_adapter_rules_are_off_by_default(chart):
    objs = objects(render(chart))
    assert find(objs, "HorizontalPodAutoscaler") == []
    assert find(objs, "ConfigMap", f"{PREFIX}-prometheus-adapter-rules") == []


def test_autoscaled_hpa_targets_queue_time_and_gpu_utilisation(chart):
    objs = objects(render(chart, scenario_values("autoscaled-monitoring")))
    hpa = one(objs, "HorizontalPodAutoscaler")
    dep = triton(objs)
    assert "replicas" not in dep["spec"]  # the HPA owns the replica count
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    metrics = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"]}
    assert metrics == {
        "triton_queue_time_per_request_us": {"type": "AverageValue", "averageValue": "15000"},
        "triton_gpu_utilization_percent": {"type": "AverageValue", "averageValue": "85"},
    }


@pytest.mark.parametrize("queue_metric", [None, "loopstream_triton_queue_us"])
def test_adapter_rule_names_equal_hpa_metric_names(chart, queue_metric):
    values = scenario_values("autoscaled-monitoring")
    if queue_metric:
        values["triton"]["autoscaling"]["queueTime"]["metricName"] = queue_metric
    objs = objects(render(chart, values))
    hpa_names = {m["pods"]["metric"]["name"] for m in one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"]}
    rules = adapter_rules(objs)
    by_source = {r["name"]["matches"].strip("^$"): r for r in rules}
    queue = by_source["nv_inference_queue_duration_us"]
    assert queue["name"]["as"] in hpa_names
    assert queue["name"]["as"] == (queue_metric or "triton_queue_time_per_request_us")
    assert by_source["nv_gpu_utilization"]["name"]["as"] in hpa_names
    assert hpa_names <= {r["name"]["as"] for r in rules}
    # Average queue time per request = queue time rate / successful request rate.
    q = queue["metricsQuery"]
    assert q.index("nv_inference_queue_duration_us") < q.index("/") < q.index("nv_inference_request_success")
    assert 'model=~"loops_.+"' in q and "[2m]" in q
    for rule in rules:
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }


# ---------------------------------------------------------------- tracker


def test_tracker_statefulset_follows_the_service_contract(chart):
    objs = objects(render(chart))
    sts = tracker(objs)
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = container(sts, "tracker")
    assert spec["replicas"] == 1
    assert c["command"] == ["loopstream-tracker"]
    assert c["args"] == [
        "--host=0.0.0.0",
        "--port=50061",
        "--metrics-port=9102",
        "--db=/data/tracker.db",
        "--token-file=/secrets/token",
        "--ab-policy=/config/ab-policy.json",
        "--view-port=8090",
    ]
    for probe in ("startupProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": 50061}
    # Readiness asks the Tracker service: NOT_SERVING while the store cannot write (full disk).
    assert c["readinessProbe"]["grpc"] == {"port": 50061, "service": "loopstream.v1.Tracker"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/data"]["name"] == "data"
    assert "subPath" not in mounts["/config"]  # subPath mounts never see ConfigMap updates
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/config"]["name"]]["configMap"]["name"] == f"{PREFIX}-tracker-ab-policy"
    assert volumes[mounts["/secrets"]["name"]]["secret"]["secretName"] == f"{PREFIX}-tracker-token"
    assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {}}
    sec = c["securityContext"]
    assert sec["readOnlyRootFilesystem"] is True and sec["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["serviceAccountName"] == f"{PREFIX}-tracker"
    secret = one(objs, "Secret", f"{PREFIX}-tracker-token")
    assert len(secret["data"]["token"]) > 40


def test_tracker_store_is_migrated_before_the_probed_container_starts(chart):
    """A schema migration of a large store outlasts the startup probe: an init container does it."""
    sts = tracker(objects(render(chart)))
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]
    c = container(sts, "tracker")
    assert init["command"] == c["command"] and init["image"] == c["image"]
    db = [a for a in c["args"] if a.startswith("--db=")]
    assert init["args"] == [*db, "--migrate-only"]
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {"data": "/data", "tmp": "/tmp"}
    assert init["securityContext"] == c["securityContext"] and "startupProbe" not in init


def test_tracker_tls_uses_secret_and_exec_probe(chart):
    objs = objects(render(chart, scenario_values("gpu-node")))
    c = container(tracker(objs), "tracker")
    assert "--tls-cert=/tls/tls.crt" in c["args"] and "--tls-key=/tls/tls.key" in c["args"]
    volumes = {v["name"]: v for v in tracker(objs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "loopstream-tracker-tls"
    # kubelet's gRPC probe has no TLS: the image's checker is used instead.
    cmd = c["readinessProbe"]["exec"]["command"]
    assert cmd[0] == "loopstream-healthcheck" and "--ca" in cmd and "50061" in cmd
    assert cmd[-2:] == ["--service", "loopstream.v1.Tracker"]
    assert c["livenessProbe"]["exec"]["command"][-2:] == ["--service", ""]
    assert "grpc" not in c["readinessProbe"]


def test_cert_manager_certificate_names_the_service(chart):
    objs = objects(render(chart, scenario_values("autoscaled-monitoring"), MONITORING_APIS))
    cert = one(objs, "Certificate")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["issuerRef"] == {
        "name": "facility-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert f"{PREFIX}-tracker.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]
    volumes = {v["name"]: v for v in tracker(objs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == cert["spec"]["secretName"]


def test_ab_policy_configmap_is_the_values_json(chart):
    values = scenario_values("autoscaled-monitoring")
    cm = one(objects(render(chart, values)), "ConfigMap", f"{PREFIX}-tracker-ab-policy")
    assert json.loads(cm["data"]["ab-policy.json"]) == {
        "pipeline": "loops_semantic",
        "arms": {"1": 0.9, "2": 0.1},
    }


def test_ab_policy_with_shadow_is_a_policy_the_tracker_accepts(chart):
    shadow = {"version": "2", "fraction": 0.05}
    values = {"tracker": {"abPolicy": {"arms": {"1": 0.9, "2": 0.1}, "shadow": shadow}}}
    cm = one(objects(render(chart, values)), "ConfigMap", f"{PREFIX}-tracker-ab-policy")
    policy = RolloutPolicy.from_json(cm["data"]["ab-policy.json"])
    assert policy == RolloutPolicy("loops_semantic", {"1": 0.9, "2": 0.1}, Shadow("2", 0.05))


def test_existing_token_secret_is_used_and_not_created(chart):
    objs = objects(render(chart, {"tracker": {"auth": {"existingSecret": "facility-token"}}}))
    # The only Secret left is Triton's admin header (issue 14): no tracker token is generated.
    assert [s["metadata"]["name"] for s in find(objs, "Secret")] == [f"{PREFIX}-triton-admin"]
    volumes = {v["name"]: v for v in tracker(objs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["token"]["secret"]["secretName"] == "facility-token"


def test_rbac_reads_only_endpointslices_and_the_ab_configmap(chart):
    objs = objects(render(chart))
    role = one(objs, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): r for r in role["rules"]}
    assert set(rules) == {(("discovery.k8s.io",), ("endpointslices",)), (("",), ("configmaps",))}
    assert rules[("discovery.k8s.io",), ("endpointslices",)]["verbs"] == ["get", "list", "watch"]
    cm_rule = rules[("",), ("configmaps",)]
    assert cm_rule["verbs"] == ["get", "watch"]
    assert cm_rule["resourceNames"] == [f"{PREFIX}-tracker-ab-policy"]
    assert find(objs, "ClusterRole") == [] and find(objs, "ClusterRoleBinding") == []
    binding = one(objs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": tracker(objs)["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": NAMESPACE,
        }
    ]


# --------------------------------------------------------- network policy


def _env_from_secret(c: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's environment as the kubelet sets it, Secret references resolved."""
    env = {}
    for var in c.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        elif "value" in var:
            env[var["name"]] = var["value"]
    return env


def _expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of container args."""
    for name, value in env.items():
        arg = arg.replace(f"$({name})", value)
    return arg


def _secrets(objs) -> dict[str, dict[str, str]]:
    import base64

    return {
        o["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()}
        for o in find(objs, "Secret")
    }


def test_triton_admin_apis_need_the_header_from_the_secret_that_rollout_sends(chart):
    objs = objects(render(chart))
    secrets = _secrets(objs)
    admin = secrets[f"{PREFIX}-triton-admin"]
    header = AdminHeader(admin["key"], admin["value"])  # the chart's random value is a valid one
    assert header.key == "loopstream-admin"
    c = container(triton(objs), "tritonserver")
    args = [_expand(a, _env_from_secret(c, secrets)) for a in c["args"]]
    apis = ("model-repository", "model-config", "shared-memory", "trace", "logging")
    assert [a for a in args if "restricted" in a] == header.server_args(apis)
    assert header.value not in json.dumps(c["args"]), "the value comes from the Secret, not the manifest"
    # loopstream-rollout runs in the tracker pod and reads the same Secret.
    rollout_env = _env_from_secret(container(tracker(objs), "tracker"), secrets)
    assert rollout_env["LOOPSTREAM_TRITON_ADMIN_HEADER_KEY"] == header.key
    assert rollout_env["LOOPSTREAM_TRITON_ADMIN_HEADER_VALUE"] == header.value
    readers = [
        o["metadata"]["name"]
        for o in objs
        if f"{PREFIX}-triton-admin" in json.dumps(o) and o["kind"] != "Secret"
    ]
    assert sorted(readers) == [f"{PREFIX}-tracker", f"{PREFIX}-triton"], "no other pod may hold the header"


def test_triton_admin_header_from_an_existing_secret_or_off(chart):
    objs = objects(
        render(chart, {"triton": {"admin": {"existingSecret": "pool-admin", "apis": ["logging"]}}})
    )
    assert f"{PREFIX}-triton-admin" not in _secrets(objs)
    c = container(triton(objs), "tritonserver")
    refs = {v["valueFrom"]["secretKeyRef"]["name"] for v in c["env"] if "valueFrom" in v}
    assert refs == {"pool-admin"}
    assert (
        "--grpc-restricted-protocol=logging:$(TRITON_ADMIN_HEADER_KEY)=$(TRITON_ADMIN_HEADER_VALUE)"
        in c["args"]
    )

    objs = objects(render(chart, {"triton": {"admin": {"enabled": False}}}))
    assert f"{PREFIX}-triton-admin" not in _secrets(objs)
    assert not [a for a in container(triton(objs), "tritonserver")["args"] if "restricted" in a]
    assert "LOOPSTREAM_TRITON_ADMIN_HEADER_KEY" not in json.dumps(tracker(objs))


def _rules_for_port(policy: dict[str, Any], port: str) -> list[dict[str, Any]]:
    return [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r.get("ports", []))]


def test_network_policy_limits_triton_grpc_to_tracker_and_clients(chart):
    objs = objects(render(chart))
    dep, sts = triton(objs), tracker(objs)
    policy = one(objs, "NetworkPolicy", f"{PREFIX}-triton")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert matches(policy["spec"]["podSelector"], dep["spec"]["template"]["metadata"]["labels"])
    assert not matches(policy["spec"]["podSelector"], sts["spec"]["template"]["metadata"]["labels"])
    (grpc_rule,) = _rules_for_port(policy, "grpc")
    peers = grpc_rule["from"]  # a rule without "from" would admit everyone
    assert len(peers) == 2 and all(set(p) == {"podSelector"} for p in peers)
    assert matches(peers[0]["podSelector"], sts["spec"]["template"]["metadata"]["labels"])
    assert peers[1]["podSelector"] == {"matchLabels": {"loopstream.io/role": "client"}}
    (metrics_rule,) = _rules_for_port(policy, "metrics")
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert all(p["port"] == "metrics" for p in metrics_rule["ports"])


def test_network_policy_tracker_and_client_namespaces(chart):
    objs = objects(render(chart, scenario_values("autoscaled-monitoring")))
    client_peer = {
        "podSelector": {"matchLabels": {"loopstream.io/role": "client"}},
        "namespaceSelector": {"matchLabels": {"loopstream.io/clients": "true"}},
    }
    (grpc_rule,) = _rules_for_port(one(objs, "NetworkPolicy", f"{PREFIX}-triton"), "grpc")
    assert client_peer in grpc_rule["from"]
    trk = one(objs, "NetworkPolicy", f"{PREFIX}-tracker")
    assert matches(trk["spec"]["podSelector"], tracker(objs)["spec"]["template"]["metadata"]["labels"])
    (grpc_rule,) = _rules_for_port(trk, "grpc")
    assert grpc_rule["from"] == [client_peer, {"ipBlock": {"cidr": "10.20.0.0/16"}}]
    (metrics_rule,) = _rules_for_port(trk, "metrics")
    assert list(metrics_rule["from"][0]) == ["namespaceSelector"]


def test_network_policy_can_be_disabled(chart):
    assert find(objects(render(chart, {"networkPolicy": {"enabled": False}})), "NetworkPolicy") == []


# ------------------------------------------------------------- monitoring


def test_monitoring_objects_only_when_the_crds_exist(case):
    name, objs, objs_mon = case
    assert find(objs, "ServiceMonitor") == []
    assert find(objs, "ConfigMap", f"{PREFIX}-dashboard") == []
    enabled = name != "cpu-dev"  # the dev scenario switches monitoring off
    assert len(find(objs_mon, "ServiceMonitor")) == (2 if enabled else 0)
    assert len(find(objs_mon, "ConfigMap", f"{PREFIX}-dashboard")) == (1 if enabled else 0)


def test_service_monitors_select_the_metrics_ports(chart):
    objs = objects(render(chart, scenario_values("autoscaled-monitoring"), MONITORING_APIS))
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    for sm in find(objs, "ServiceMonitor"):
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selected = [s for s in services.values() if matches(sm["spec"]["selector"], s["metadata"]["labels"])]
        assert len(selected) == 1, "each pod must be scraped through exactly one Service"
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["interval"] == "10s"
        assert "metrics" in {p["name"] for p in selected[0]["spec"]["ports"]}


def test_dashboard_has_the_required_panels_and_metrics(chart):
    objs = objects(render(chart, {}, MONITORING_APIS))
    cm = one(objs, "ConfigMap", f"{PREFIX}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["loopstream.json"])
    panels = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in dashboard["panels"]}
    wanted = {
        "Frames/s per microscope": ["loopstream_tracker_frames_total", "microscope"],
        "Triton queue time per request": ["nv_inference_queue_duration_us", "nv_inference_request_success"],
        "Batch size (inferences per execution)": ["nv_inference_count", "nv_inference_exec_count"],
        "Latency per model version": ["nv_inference_request_duration_us", "version"],
        "Tracker lag": ["loopstream_tracker_frame_latency_seconds_bucket"],
        "Loops per frame per arm": [
            "loopstream_tracker_detections_total",
            "loopstream_tracker_frames_total",
            "arm",
        ],
    }
    for title, needles in wanted.items():
        assert title in panels, title
        for needle in needles:
            assert needle in panels[title], (title, needle)
    exprs = " ".join(panels.values())
    used = {m for m in TRACKER_METRICS | TRITON_METRICS if m in exprs}
    assert used == TRACKER_METRICS | TRITON_METRICS
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_notes_tell_how_to_reach_the_pool(chart):
    notes = render(chart)["loopstream/templates/NOTES.txt"]
    assert f"dns:///{PREFIX}-triton-headless.{NAMESPACE}.svc.cluster.local:8001" in notes
    assert f"{PREFIX}-tracker.{NAMESPACE}.svc.cluster.local:50061" in notes
    assert "loopstream.io/role" in notes


# ----------------------------------------------------------------- schema


@pytest.mark.parametrize(
    "values",
    [
        {"triton": {"replicas": -1}},
        {"triton": {"replicas": "2"}},
        {"triton": {"replica": 2}},  # typo: unknown key
        {"tracker": {"replicas": 2}},  # SQLite: at most one
        {"triton": {"gpu": {"enabled": "yes"}}},
        {"triton": {"gpu": {"count": 0}}},
        {"triton": {"shm": {"sizeLimit": "plenty"}}},
        {"triton": {"modelRepository": {"source": "nfs"}}},
        {"triton": {"modelRepository": {"objectStorage": {"url": "ftp://x/y"}}}},
        {"triton": {"resources": {"limits": {"nvidia.com/gpu": 2}}}},  # GPUs come from triton.gpu
        {"triton": {"autoscaling": {"maxReplicas": 0}}},
        {"triton": {"autoscaling": {"queueTime": {"metricName": "bad name"}}}},
        {"triton": {"ports": {"grpc": 70000}}},
        {"tracker": {"abPolicy": {"arms": {"v2": 1.0}}}},
        {"tracker": {"abPolicy": {"arms": {"1": 1.5}}}},
        {"tracker": {"abPolicy": {"shadow": {"version": "2", "fraction": 0}}}},
        {"tracker": {"abPolicy": {"shadow": {"version": "2"}}}},
        {"networkPolicy": {"clientPodSelector": {"matchLabel": {"a": "b"}}}},
        {"triton": {"admin": {"headerKey": "Admin Key"}}},  # not a gRPC metadata key
        {"triton": {"admin": {"headerKey": "grpc-admin"}}},  # reserved by gRPC
        {"triton": {"admin": {"apis": ["model-repo"]}}},  # no such Triton API group
        {"triton": {"admin": {"apis": []}}},
        {"monitoring": {"serviceMonitor": {"interval": "often"}}},
        {"unknown": True},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":"))[:60],
)
def test_schema_rejects_invalid_values(chart, values):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(chart, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"triton": {"modelRepository": {"source": "pvc"}}}, "existingClaim is required"),
        (
            {"triton": {"modelRepository": {"source": "s3", "objectStorage": {"url": "s3://b/p"}}}},
            "existingSecret",
        ),
        (
            {
                "triton": {
                    "modelRepository": {
                        "source": "s3",
                        "objectStorage": {"url": "gs://b/p", "existingSecret": "x"},
                    }
                }
            },
            "s3://",
        ),
        ({"tracker": {"abPolicy": {"arms": {"1": 0.5, "2": 0.4}}}}, "sum to 1"),
        ({"tracker": {"tls": {"enabled": True}}}, "existingSecret is required"),
        ({"triton": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}, "minReplicas"),
    ],
)
def test_inconsistent_values_fail_at_render(chart, values, message):
    chart.validate_schema(values)  # well-typed ...
    with pytest.raises(helm.HelmError, match=message):  # ... but refused with a clear message
        render(chart, values)


def _schema_paths(schema: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add(prefix + key)
        paths |= _schema_paths(sub, root, prefix + key + ".")
    return paths


def _value_paths(
    values: dict[str, Any], schema: dict[str, Any], root: dict[str, Any], prefix: str = ""
) -> set[str]:
    """Paths of values.yaml down to where the schema stops naming properties."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        sub = schema.get("properties", {}).get(key)
        if (
            isinstance(value, dict)
            and sub is not None
            and "properties" in (root["$defs"][sub["$ref"].split("/")[-1]] if "$ref" in sub else sub)
        ):
            paths |= _value_paths(value, sub, root, prefix + key + ".")
    return paths


def test_schema_covers_every_value_and_forbids_unknown_keys():
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = _value_paths(defaults, schema, schema) - _schema_paths(schema, schema)
    assert not missing, f"values without a schema entry: {sorted(missing)}"

    def closed(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for key, sub in node.items():
                closed(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                closed(sub, f"{where}/{i}")

    closed(schema, "#")
    # ... and the defaults themselves are valid.
    helm.Chart.load(CHART).validate_schema(defaults)


# ------------------------------------------------------------- web view


def test_tracker_serves_the_web_view_through_its_own_service(chart):
    objs = objects(render(chart))
    sts = tracker(objs)
    c = container(sts, "tracker")
    assert "--view-port=8090" in c["args"] and not any("viewer-token" in a for a in c["args"])
    assert {"name": "view", "containerPort": 8090, "protocol": "TCP"} in c["ports"]
    service = one(objs, "Service", f"{PREFIX}-tracker-view")
    assert matches(
        {"matchLabels": service["spec"]["selector"]}, sts["spec"]["template"]["metadata"]["labels"]
    )
    assert service["spec"]["ports"] == [
        {"name": "view", "port": 8090, "targetPort": "view", "protocol": "TCP", "appProtocol": "http"}
    ]
    assert find(objs, "Ingress") == []  # optional, off by default
    (view_rule,) = _rules_for_port(one(objs, "NetworkPolicy", f"{PREFIX}-tracker"), "view")
    assert "from" not in view_rule  # any pod may ask; the view itself wants a token


def test_web_view_ingress_viewer_token_and_tls(chart):
    objs = objects(render(chart, scenario_values("autoscaled-monitoring")))
    sts = tracker(objs)
    c = container(sts, "tracker")
    assert "--viewer-token-file=/secrets-viewer/token" in c["args"] and "--tls-cert=/tls/tls.crt" in c["args"]
    assert {"name": "viewer-token", "mountPath": "/secrets-viewer", "readOnly": True} in c["volumeMounts"]
    (volume,) = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "viewer-token"]
    assert volume["secret"]["secretName"] == "loopstream-viewer-token"
    service = one(objs, "Service", f"{PREFIX}-tracker-view")
    assert service["spec"]["ports"][0]["appProtocol"] == "https"  # the tracker has TLS: so has the view
    ingress = one(objs, "Ingress", f"{PREFIX}-tracker-view")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["loopstream.facility.example"], "secretName": "loopstream-view-tls"}
    ]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "loopstream.facility.example"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": f"{PREFIX}-tracker-view", "port": {"name": "view"}}
    (view_rule,) = _rules_for_port(one(objs, "NetworkPolicy", f"{PREFIX}-tracker"), "view")
    assert view_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]


def test_web_view_can_be_turned_off_and_an_ingress_needs_a_host(chart):
    objs = objects(render(chart, {"tracker": {"view": {"enabled": False, "port": 8090}}}))
    assert not any(a.startswith("--view-port") for a in container(tracker(objs), "tracker")["args"])
    assert find(objs, "Service", f"{PREFIX}-tracker-view") == []
    assert _rules_for_port(one(objs, "NetworkPolicy", f"{PREFIX}-tracker"), "view") == []
    with pytest.raises(Exception, match="the Ingress needs the view's host name"):
        render(chart, {"tracker": {"view": {"enabled": True, "port": 8090, "ingress": {"enabled": True}}}})
