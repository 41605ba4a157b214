"""``loopstream-serve`` as a supervisor runs it (a real process, a real tritonserver): ports 0,
the admin header on Triton's control APIs, and nothing left behind by a server killed with SIGKILL."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from loopstream.client.inference import pinned_version
from loopstream.ops import rollout_cli
from loopstream.ops.pool import admin_client
from loopstream.serving import leftovers
from loopstream.serving.admin import DEFAULT_KEY, AdminHeader, SendAdminHeader
from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.repository import add_version
from loopstream.tracker.rollout import RolloutPolicy, write_policy
from tests.conftest import SEMANTIC_V1_ONNX

PIPELINE = "loops_semantic"
ADMIN = AdminHeader(DEFAULT_KEY, "test-admin-value-0123456789")
STUB = "triton_python_backend_stub"


class Serve:
    """One ``loopstream-serve`` process on ports 0, and the JSON line it printed when ready."""

    def __init__(self, root: Path, cache: Path) -> None:
        argv = [sys.executable, "-m", "loopstream.serving.cli", "--repository", str(root / "repository")]
        argv += ["--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--model-control=explicit"]
        argv += [f"--load-model={PIPELINE}_core", f"--load-model={PIPELINE}", f"--cache-dir={cache}"]
        argv += [f"--log={root / 'tritonserver.log'}", "--ready-timeout-s=240"]
        env = dict(os.environ, LOOPSTREAM_SERVE_ADMIN_HEADER_VALUE=ADMIN.value)
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        self.stderr: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.process.stdout], daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        try:
            self.listening = json.loads(lines.get(timeout=260))
        except queue.Empty:
            self.stop()
            raise AssertionError(f"loopstream-serve printed nothing: {''.join(self.stderr)}") from None

    @property
    def grpc(self) -> str:
        return self.listening["grpc"]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


def _stubs(cache: Path) -> list[psutil.Process]:
    backends = str(cache.resolve() / "backends")
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith(backends) and p.info["cmdline"][0].endswith(STUB)
    ]


def _regions(cache: Path) -> set[str]:
    return {p.name for p in leftovers.SHM_DIR.glob(f"{leftovers.shm_prefix(cache)}*")}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    spec = PipelineSpec.read(SEMANTIC_V1_ONNX.parents[2] / PIPELINE / "1" / "pipeline.json")
    add_version(root / "repository", PIPELINE, spec, SEMANTIC_V1_ONNX, 1)
    cache = root / "cache"
    serve = Serve(root, cache)
    try:
        yield {"serve": serve, "root": root, "cache": cache}
    finally:
        serve.stop()
        leftovers.remove_leftovers(cache)


def test_every_port_0_is_a_free_port_printed_in_the_json_line(served: dict) -> None:
    listening = served["serve"].listening
    ports = [int(listening[k].rsplit(":", 1)[1].split("/")[0]) for k in ("grpc", "http", "metrics")]
    assert 0 not in ports and len(set(ports)) == 3, listening
    with urllib.request.urlopen(f"http://{listening['http']}/v2/health/ready", timeout=5) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(listening["metrics"], timeout=5) as reply:
        assert b"nv_inference_count" in reply.read()
    with triton.InferenceServerClient(listening["grpc"]) as client:
        assert client.is_model_ready(PIPELINE)
    assert listening["admin_apis_restricted"] == ["model-repository", "model-config", "trace", "logging"]


def test_admin_apis_need_the_header_and_inference_does_not(served: dict) -> None:
    url, http_url = served["serve"].grpc, served["serve"].listening["http"]
    with triton.InferenceServerClient(url) as client:
        for call in (lambda: client.unload_model(PIPELINE), client.get_model_repository_index):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        with pytest.raises(InferenceServerException) as refused:
            triton_http.InferenceServerClient(http_url).unload_model(PIPELINE)
        assert refused.value.status() == "403" and "restricted" in refused.value.message()
        assert client.is_model_ready(PIPELINE), "a refused unload must leave the pipeline serving"

        frame = np.random.default_rng(0).integers(0, 4000, (256, 256)).astype(np.uint16)
        tensor = triton.InferInput("FRAME_U16", list(frame.shape), "UINT16")
        tensor.set_data_from_numpy(frame)
        assert client.infer(PIPELINE, [tensor]).as_numpy("DETECTIONS").shape[1] == 11
        assert pinned_version(url, PIPELINE, timeout_s=10) == "1", "a microscope client pins without it"

    with admin_client(url, ADMIN) as admin:
        admin.unload_model(PIPELINE)
        deadline = time.monotonic() + 30
        while admin.is_model_ready(PIPELINE) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not admin.is_model_ready(PIPELINE)
        admin.load_model(PIPELINE)
        assert admin.is_model_ready(PIPELINE)
    http_admin = triton_http.InferenceServerClient(http_url)
    http_admin.register_plugin(SendAdminHeader(ADMIN, "http"))
    assert {m["name"] for m in http_admin.get_model_repository_index()} >= {PIPELINE}


def test_the_rollout_cli_sends_the_admin_header(
    served: dict, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOPSTREAM_TRITON_ADMIN_HEADER_VALUE", raising=False)
    policy = tmp_path / "ab-policy.json"
    write_policy(policy, RolloutPolicy(PIPELINE, {"1": 1.0}))
    flags = ["--policy-file", str(policy), "--replicas", served["serve"].grpc]

    assert rollout_cli.main([*flags, "load", "1"]) == 1
    assert "restricted" in capsys.readouterr().err
    monkeypatch.setenv("LOOPSTREAM_TRITON_ADMIN_HEADER_VALUE", ADMIN.value)
    assert rollout_cli.main([*flags, "load", "1"]) == 0
    assert rollout_cli.main([*flags, "status"]) == 0
    assert f"replica {served['serve'].grpc}: serves [1]" in capsys.readouterr().out


def test_a_cache_directory_serves_one_server_at_a_time(tmp_path: Path) -> None:
    lock = leftovers.claim(tmp_path)
    with pytest.raises(RuntimeError, match=f"in use by a running server \\(supervisor pid {os.getpid()}\\)"):
        leftovers.claim(tmp_path)
    lock.close()
    leftovers.claim(tmp_path).close()


def test_what_a_killed_server_left_is_removed_by_the_next_start(served: dict) -> None:
    """Last in this module: it kills the module's server."""
    serve, cache = served["serve"], served["cache"]
    stubs = _stubs(cache)
    regions = _regions(cache)
    assert stubs and regions, "the running server should have stubs and /dev/shm regions"
    tritonserver = psutil.Process(serve.listening["pid"])
    for stub in stubs:  # hung stubs (a stub busy in its model misses its parent's death and stays)
        stub.suspend()
    serve.process.kill()  # the supervisor, then its server, each with SIGKILL and alone
    serve.process.wait(10)
    tritonserver.kill()
    tritonserver.wait(10)
    time.sleep(2)
    assert all(s.is_running() for s in stubs), "the hung stubs outlive their killed server"
    assert regions <= _regions(cache), "and so do their /dev/shm regions"

    again = Serve(served["root"], cache)
    try:
        assert not any(s.is_running() and s.status() != psutil.STATUS_ZOMBIE for s in stubs)
        assert not regions & _regions(cache), "the killed server's /dev/shm regions are still there"
        assert "removed what a killed server left" in "".join(again.stderr)
        with triton.InferenceServerClient(again.grpc) as client:
            assert client.is_model_ready(PIPELINE)

        # A server that dies under a running supervisor takes its stubs with it.
        new_stubs = _stubs(cache)
        os.kill(again.listening["pid"], signal.SIGKILL)
        assert again.process.wait(30) == 1
        psutil.wait_procs(new_stubs, timeout=10)
        assert not _stubs(cache)
    finally:
        again.stop()
    served["serve"] = again
