"""What the live web view costs the tracker's ingest, printed as a markdown table.

    nice -n 10 .venv/bin/python bench/bench_webview.py [--frames 150] [--rounds 2]

8 simulated microscopes stream ``--frames`` frames each (200 loops per frame, a 512 px JPEG
preview with every 10th frame) into one tracker over gRPC, each client in its own process; once
with no viewer and once with 4 viewers, each in its own process, holding the control room's
live stream and one session page's live stream open and fetching every new preview, as the
pages do. The figure is the tracker's total ingest frames/s; rounds alternate (A B B A ...) so a
drift in the machine's load falls on both. Target: with viewers >= 0.95 x without.

The viewers are HTTP clients, not browsers: rendering happens on the viewers' machines, not the
tracker's, and 4 chromium instances would take the tracker's cores here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from loopstream.client.preview import preview_message
from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.server import ServerConfig, serve
from loopstream.v1 import tracker_pb2 as pb

MICROSCOPES, VIEWERS, LOOPS, PREVIEW_EVERY, SIZE_PX = 8, 4, 200, 10, 2048
PIXEL_NM, FPS = 0.390625, 30.0


def _messages(session_id: str, n_frames: int, seed: int) -> list[pb.FrameDetections]:
    """A microscope's frames: ``LOOPS`` drifting loops, a preview of a noisy frame every 10th."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, SIZE_PX, (LOOPS, 2))
    major = rng.uniform(6, 20, LOOPS)
    picture = rng.normal(1000, 100, (1024, 1024)).astype(np.uint16)
    preview = preview_message(picture)
    messages = []
    for t in range(n_frames):
        p = xy + np.array([0.05, -0.03]) * t + rng.normal(0, 0.2, (LOOPS, 2))
        loops = pd.DataFrame(
            {
                "score": 0.9,
                "x_px": p[:, 0],
                "y_px": p[:, 1],
                "major_px": major,
                "minor_px": 0.7 * major,
                "angle_deg": 0.0,
                "area_px": np.pi / 4 * 0.7 * major**2,
                "bbox_x_px": p[:, 0] - major / 2,
                "bbox_y_px": p[:, 1] - major / 2,
                "bbox_width_px": major,
                "bbox_height_px": major,
            }
        )
        msg = frame_message(session_id, t, t / FPS, loops, SIZE_PX, SIZE_PX)
        if t % PREVIEW_EVERY == 0:
            msg.preview.CopyFrom(preview)
        messages.append(msg)
    return messages


def _microscope(port: int, session_id: str, n_frames: int, seed: int, ready, start, done) -> None:
    messages = _messages(session_id, n_frames, seed)
    client = TrackerClient(f"127.0.0.1:{port}")
    ready.put(True)
    start.wait()
    acks = list(client.stream(messages))
    done.put((len(acks), all(a.accepted and not a.error for a in acks)))
    client.close()


def _read_events(url: str, on_event, stop) -> None:
    with urllib.request.urlopen(url, timeout=60) as stream:
        for line in stream:
            if stop.is_set():
                return
            if line.startswith(b"data: "):
                on_event(json.loads(line[6:]))


def _viewer(view_port: int, session_id: str, ready, stop) -> None:
    """A browser's worth of requests: the control room's stream, a session page's, its previews."""
    base = f"http://127.0.0.1:{view_port}"
    stop_local = threading.Event()

    def on_session(update: dict) -> None:
        shown = update.get("shown")
        if shown and shown["preview"]:
            with urllib.request.urlopen(f"{base}/api/sessions/{session_id}/preview", timeout=30) as r:
                r.read()

    threads = [
        threading.Thread(target=_read_events, args=(f"{base}/api/events", lambda e: None, stop_local)),
        threading.Thread(
            target=_read_events, args=(f"{base}/api/sessions/{session_id}/events", on_session, stop_local)
        ),
    ]
    for t in threads:
        t.daemon = True
        t.start()
    ready.put(True)
    stop.wait()
    stop_local.set()


def run(tmp: Path, n_frames: int, viewers: int, label: str) -> float:
    running = serve(ServerConfig(db=tmp / f"{label}.db", port=0, metrics_port=-1, view_port=0))
    client = TrackerClient(f"127.0.0.1:{running.port}")
    spawn = multiprocessing.get_context("spawn")
    ready, start, done, stop = spawn.Queue(), spawn.Event(), spawn.Queue(), spawn.Event()
    try:
        sessions = [
            client.OpenSession(
                pb.SessionSpec(
                    microscope_id=f"microscope-{i}",
                    pixel_size_nm=PIXEL_NM,
                    frame_rate_hz=FPS,
                    dose_rate_ions_cm2_s=1e11,
                )
            ).session_id
            for i in range(MICROSCOPES)
        ]
        watchers = [
            spawn.Process(target=_viewer, args=(running.view_port, sessions[i], ready, stop))
            for i in range(viewers)
        ]
        scopes = [
            spawn.Process(target=_microscope, args=(running.port, sid, n_frames, i, ready, start, done))
            for i, sid in enumerate(sessions)
        ]
        for p in watchers + scopes:
            p.start()
        for _ in watchers + scopes:
            ready.get(timeout=300)
        time.sleep(1.0)  # the viewers' streams are open and idle
        started = time.perf_counter()
        start.set()
        results = [done.get(timeout=600) for _ in scopes]
        elapsed = time.perf_counter() - started
        assert results == [(n_frames, True)] * MICROSCOPES, results
        streams = running.view._streams
        stop.set()
        for p in watchers + scopes:
            p.join(30)
    finally:
        client.close()
        running.stop(0.5)
    assert streams == 2 * viewers, f"{streams} live streams open, expected {2 * viewers}"
    return MICROSCOPES * n_frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=150, help="frames per microscope per run")
    parser.add_argument("--rounds", type=int, default=2, help="pairs of runs (A B, then B A, ...)")
    args = parser.parse_args()
    figures: dict[int, list[float]] = {0: [], VIEWERS: []}
    with tempfile.TemporaryDirectory(prefix="bench-webview-") as tmp:
        for r in range(args.rounds):
            order = (0, VIEWERS) if r % 2 == 0 else (VIEWERS, 0)
            for viewers in order:
                fps = run(Path(tmp), args.frames, viewers, f"r{r}v{viewers}")
                figures[viewers].append(fps)
                print(f"round {r + 1}, {viewers} viewers: {fps:.1f} frames/s", flush=True)
    without, with_viewers = np.mean(figures[0]), np.mean(figures[VIEWERS])
    print()
    print("| viewers | runs (frames/s) | mean frames/s | ratio to no viewer |")
    print("|---|---|---|---|")
    for viewers, mean in ((0, without), (VIEWERS, with_viewers)):
        runs = ", ".join(f"{f:.1f}" for f in figures[viewers])
        print(f"| {viewers} | {runs} | {mean:.1f} | {mean / without:.3f} |")


if __name__ == "__main__":
    main()
