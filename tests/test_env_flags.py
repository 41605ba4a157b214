"""The environment variables that the images and the Helm chart set reach the CLIs' flags."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loopstream.client.cli import build_parser as client_parser
from loopstream.ops.rollout_cli import build_parser as rollout_parser
from loopstream.serving.cli import build_parser as serve_parser
from loopstream.tracker.cli import parser as tracker_parser
from loopstream.tracker.server import ServerConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_tracker_image_environment_sets_the_tracker_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    image_env = dict(
        re.findall(
            r"(LOOPSTREAM_TRACKER_\w+)=(\S+)", (ROOT / "containers" / "tracker.Containerfile").read_text()
        )
    )
    assert set(image_env) == {
        "LOOPSTREAM_TRACKER_HOST",
        "LOOPSTREAM_TRACKER_PORT",
        "LOOPSTREAM_TRACKER_METRICS_PORT",
        "LOOPSTREAM_TRACKER_DB",
    }
    for name, value in image_env.items():
        monkeypatch.setenv(name, value)
    args = tracker_parser().parse_args([])
    assert (args.host, args.port, args.metrics_port, args.db) == ("0.0.0.0", 50061, 9102, "/data/tracker.db")


def test_the_tracker_flags_default_to_its_server_config() -> None:
    args, config = tracker_parser().parse_args([]), ServerConfig()
    assert (args.host, args.port, args.metrics_port, args.view_port, args.db) == (
        config.host,
        config.port,
        config.metrics_port,
        config.view_port,
        str(config.db),
    )
    assert (args.max_message_bytes, args.max_watchers, args.max_detection_streams) == (
        config.max_message_bytes,
        config.max_watchers,
        config.max_detection_streams,
    )
    assert args.skip_integrity_check is not config.check_integrity


def test_client_rollout_and_serve_read_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LOOPSTREAM_TRITON_URL": "triton:8001",
        "LOOPSTREAM_TRACKER_URL": "tracker:50061",
        "LOOPSTREAM_TRACKER_TOKEN": "secret",
        "LOOPSTREAM_SHARED_MEMORY": "1",
        "LOOPSTREAM_PIPELINE": "loops_instance_ti",
        "LOOPSTREAM_NAMESPACE": "lab",
        "LOOPSTREAM_TRITON_SERVICE": "pool-headless",
        "LOOPSTREAM_TRITON_ADMIN_HEADER_VALUE": "key",
        "LOOPSTREAM_SERVE_GRPC_PORT": "0",
        "LOOPSTREAM_SERVE_READY_TIMEOUT_S": "12.5",
    }.items():
        monkeypatch.setenv(name, value)
    client = client_parser().parse_args(["simulate"])
    assert (client.triton, client.tracker, client.token, client.shared_memory, client.pipeline) == (
        "triton:8001",
        "tracker:50061",
        "secret",
        True,
        "loops_instance_ti",
    )
    rollout = rollout_parser().parse_args(["status"])
    assert (
        rollout.namespace,
        rollout.triton_service,
        rollout.triton_admin_header_value,
        rollout.tracker,
    ) == (
        "lab",
        "pool-headless",
        "key",
        "tracker:50061",
    )
    serve = serve_parser().parse_args([])
    assert (serve.grpc_port, serve.ready_timeout_s) == (0, 12.5)


def test_a_bad_value_in_the_environment_is_a_usage_error_naming_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOPSTREAM_TRACKER_PORT", "fifty")
    with pytest.raises(SystemExit):
        tracker_parser().parse_args([])
    assert "--port: invalid int value: 'fifty'" in capsys.readouterr().err


def test_help_names_each_flags_variable() -> None:
    text = tracker_parser().format_help()
    assert "[LOOPSTREAM_TRACKER_MAX_WATCHERS]" in text and "[LOOPSTREAM_TRACKER_NO_AUTH]" in text
    assert "[LOOPSTREAM_TRITON_URL]" in client_parser().format_help()
