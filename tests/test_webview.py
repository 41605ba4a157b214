"""The tracker's live web view over real HTTP(S): access, previews and their bounds, live events.

A real in-process tracker (gRPC + web view on ephemeral 127.0.0.1 ports, SQLite in tmp_path) fed
over its gRPC API; the browser tests are in test_webview_browser.py.
"""

from __future__ import annotations

import io
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import grpc
import numpy as np
import pytest
from PIL import Image

from loopstream.client.preview import preview_message
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.previews import MAX_PREVIEW_BYTES, MAX_PREVIEW_SIDE_PX
from loopstream.v1 import tracker_pb2 as pb
from tests.conftest import TRACKER_TOKEN, open_session, self_signed_certificate, serve_tracker

VIEWER_TOKEN = "viewer-token-52ab"
CONFIG = SimulationConfig(shape=(256, 256), n_frames=12, initial_loops=40)
MIC = SimulatedMicroscope(CONFIG, seed=3)


@pytest.fixture
def tracker(tmp_path):
    running = serve_tracker(tmp_path / "tracker.db", view_port=0, viewer_token=VIEWER_TOKEN)
    yield running
    running.stop(0.5)


def message(session_id: str, index: int, preview: pb.Preview | None = None) -> pb.FrameDetections:
    h, w = CONFIG.shape
    msg = frame_message(
        session_id, index, index / CONFIG.frame_rate_hz, synthetic.detections(MIC, index), w, h
    )
    if preview is not None:
        msg.preview.CopyFrom(preview)
    return msg


def get(url: str, token: str | None = None, context: ssl.SSLContext | None = None, timeout_s: float = 10):
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(request, timeout=timeout_s, context=context)


def status_of(url: str, token: str | None = None) -> int:
    try:
        with get(url, token) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def view(tracker) -> str:
    return f"http://127.0.0.1:{tracker.view_port}"


def test_nothing_is_visible_without_a_token(tracker, client):
    sid = open_session(client, CONFIG, "view-scope")
    base = view(tracker)
    for path in ("/", f"/sessions/{sid}", "/api/sessions", "/api/events", f"/api/sessions/{sid}/preview"):
        assert status_of(base + path) == 401, path
        assert status_of(base + path, "wrong-token") == 401, path
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(base + "/api/sessions")
    body = json.loads(refused.value.read())
    assert "Bearer" in body["error"] and sid not in json.dumps(body)
    with pytest.raises(urllib.error.HTTPError) as page:
        get(base + "/")
    assert "Sign in" in page.value.read().decode()  # a login form, and nothing of the sessions
    assert status_of(base + "/healthz") == 200
    for token in (TRACKER_TOKEN, VIEWER_TOKEN):
        with get(base + "/api/sessions", token) as r:
            assert [s["session_id"] for s in json.loads(r.read())["sessions"]] == [sid]


def test_the_viewer_token_is_read_only(tracker):
    viewer = TrackerClient(f"127.0.0.1:{tracker.port}", VIEWER_TOKEN)
    try:
        with pytest.raises(grpc.RpcError) as e:
            viewer.ListSessions(pb.ListSessionsRequest(), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        viewer.close()


def test_login_sets_a_cookie_that_is_not_the_token(tracker, client):
    sid = open_session(client, CONFIG, "view-scope")
    base = view(tracker)
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    form = urllib.parse.urlencode({"token": "wrong", "next": "/"}).encode()
    with pytest.raises(urllib.error.HTTPError) as wrong:
        opener.open(base + "/login", form, timeout=10)
    assert wrong.value.code == 401 and "wrong token" in wrong.value.read().decode()
    form = urllib.parse.urlencode({"token": VIEWER_TOKEN, "next": "https://elsewhere.example/"}).encode()
    with opener.open(base + "/login", form, timeout=10) as r:
        assert r.status == 200 and r.url == base + "/"  # off-site redirects go home instead
        assert "control room" in r.read().decode()
    jar = next(h for h in opener.handlers if isinstance(h, urllib.request.HTTPCookieProcessor)).cookiejar
    cookies = [c.value for c in jar]
    assert len(cookies) == 1 and VIEWER_TOKEN not in cookies[0]
    with opener.open(f"{base}/api/sessions", timeout=10) as r:
        assert [s["session_id"] for s in json.loads(r.read())["sessions"]] == [sid]
    with opener.open(f"{base}/login?token={TRACKER_TOKEN}&next=/sessions/{sid}", timeout=10) as r:
        assert r.url == f"{base}/sessions/{sid}"


def read_event(stream) -> dict:
    for line in stream:
        if line.startswith(b"data: "):
            return json.loads(line[6:])
    raise AssertionError("the event stream ended")


def test_preview_is_kept_latest_only_and_shown_with_its_frame(tracker, client):
    sid = open_session(client, CONFIG, "view-scope")
    image = MIC.frame(0).image
    acks = list(
        client.stream(
            [
                message(sid, 0, preview_message(image)),
                message(sid, 1),
                message(sid, 2, preview_message(MIC.frame(2).image, 128)),
                message(sid, 3),
            ]
        )
    )
    assert all(a.accepted and not a.error for a in acks)
    with get(f"{view(tracker)}/api/sessions/{sid}/preview", TRACKER_TOKEN) as r:
        assert r.headers["Content-Type"] == "image/jpeg" and r.headers["X-Frame-Index"] == "2"
        assert Image.open(io.BytesIO(r.read())).size == (128, 128)
    with get(f"{view(tracker)}/api/sessions/{sid}/events", TRACKER_TOKEN) as stream:
        first = read_event(stream)
    assert [row[0] for row in first["frames"]] == [0, 1, 2, 3]
    shown = first["shown"]
    assert shown["frame_index"] == 2 and shown["preview"]  # the preview's frame, not the latest
    assert len(shown["ellipses"]) == len(synthetic.detections(MIC, 2))
    assert shown["tails"] and all(len(t) > 1 for t in shown["tails"])


def test_a_preview_out_of_bounds_is_dropped_and_its_frame_stored(tracker, client):
    sid = open_session(client, CONFIG, "view-scope")

    def png(side: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((side, side), np.uint8)).save(buffer, "PNG")  # compresses well
        return buffer.getvalue()

    big = MAX_PREVIEW_SIDE_PX + 1
    bad = [
        pb.Preview(media_type="image/gif", data=b"GIF89a", width_px=1, height_px=1),
        pb.Preview(media_type="image/png", data=b"not a picture", width_px=1, height_px=1),
        pb.Preview(media_type="image/jpeg", data=png(64), width_px=64, height_px=64),
        pb.Preview(media_type="image/png", data=png(big), width_px=big, height_px=big),
        pb.Preview(media_type="image/png", data=png(64), width_px=32, height_px=32),
        pb.Preview(
            media_type="image/png", data=b"\x89PNG" + bytes(MAX_PREVIEW_BYTES), width_px=1, height_px=1
        ),
    ]
    acks = list(client.stream([message(sid, i, p) for i, p in enumerate(bad)]))
    assert all(a.accepted for a in acks)  # the detections are stored all the same
    errors = [a.error for a in acks]
    for error, expected in zip(
        errors,
        ["is not one of", "not a readable", "but its media_type", "long side", "but says", "bytes"],
        strict=True,
    ):
        assert error.startswith("frame stored, preview dropped") and expected in error, error
    assert client.GetSession(pb.SessionRef(session_id=sid)).frames_stored == len(bad)
    assert status_of(f"{view(tracker)}/api/sessions/{sid}/preview", TRACKER_TOKEN) == 404


def test_a_stored_frame_reaches_an_open_viewer_within_a_second(tracker, client):
    sid = open_session(client, CONFIG, "view-scope")
    list(client.stream([message(sid, 0)]))
    with get(f"{view(tracker)}/api/sessions/{sid}/events", TRACKER_TOKEN) as stream:
        assert [row[0] for row in read_event(stream)["frames"]] == [0]
        for index in (1, 2, 3):
            (ack,) = client.stream([message(sid, index)])
            assert ack.accepted
            stored = time.monotonic()
            update = read_event(stream)
            assert time.monotonic() - stored < 1.0
            assert [row[0] for row in update["frames"]] == [index]
            assert update["shown"]["frame_index"] == index  # no preview: the latest frame, ellipses only
        client.CloseSession(pb.SessionRef(session_id=sid))
        assert read_event(stream)["session"]["closed"] == 1
        assert stream.read().strip() == b""  # the stream ends with the session


def test_control_room_rates_and_export_zip(tracker, client):
    sid = open_session(client, CONFIG, "view-scope")
    list(client.stream([message(sid, i) for i in range(5)]))
    list(client.stream([message(sid, 2)]))  # a resend: a duplicate, not a failure
    with get(f"{view(tracker)}/api/events", TRACKER_TOKEN) as stream:
        (row,) = read_event(stream)["sessions"]
    assert row["microscope_id"] == "view-scope" and row["frames_stored"] == 5
    assert row["frames_per_s"] == pytest.approx(0.5) and row["rejected"] == 0
    expected = np.mean([len(synthetic.detections(MIC, i)) for i in range(5)])
    assert row["loops_per_frame"] == pytest.approx(expected) and row["preview_frame"] is None
    with get(f"{view(tracker)}/api/sessions/{sid}/export.zip", VIEWER_TOKEN, timeout_s=120) as r:
        archive = zipfile.ZipFile(io.BytesIO(r.read()))
    assert "frame_statistics.csv" in archive.namelist() and "density_size_vs_time.png" in archive.namelist()
    assert "fragment_joins" not in json.loads(archive.read("session.json"))
    joined_url = f"{view(tracker)}/api/sessions/{sid}/export.zip?join_fragments=1"
    with get(joined_url, VIEWER_TOKEN, timeout_s=120) as r:
        joined = zipfile.ZipFile(io.BytesIO(r.read()))
    assert json.loads(joined.read("session.json"))["fragment_joins"] >= 0
    assert "joined_track_id" in joined.read("detections.csv").decode().splitlines()[0]
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(joined_url.replace("=1", "=yes"), VIEWER_TOKEN)
    assert refused.value.code == 400 and "give 1 (join track fragments) or 0" in refused.value.read().decode()
    with get(f"http://127.0.0.1:{tracker.metrics_port}/metrics") as r:
        metrics = r.read().decode()
    assert 'loopstream_tracker_view_requests_total{status="200"}' in metrics


def test_the_view_is_https_when_the_tracker_has_tls(tmp_path):
    key, cert = self_signed_certificate(tmp_path)
    running = serve_tracker(
        tmp_path / "t.db", metrics_port=-1, view_port=0, tls_cert=str(cert), tls_key=str(key)
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with get(f"https://127.0.0.1:{running.view_port}/api/sessions", TRACKER_TOKEN, context) as r:
            assert json.loads(r.read()) == {"sessions": []}
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not served
            get(f"http://127.0.0.1:{running.view_port}/api/sessions", TRACKER_TOKEN)
    finally:
        running.stop(0.5)
