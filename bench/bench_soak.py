"""Soak: 8 simulated microscopes for 30 simulated minutes through one tracker with 50 watchers open.

    nice -n 10 .venv/bin/python bench/bench_soak.py [--microscopes 8] [--minutes 30] [--watchers 50]

The tracker runs as its own process (``loopstream-tracker``, ``--sync normal``, SQLite in a
temporary directory removed at the end). Each microscope streams one frame per
``--frame-interval-s`` of simulated time (default 2 s: 900 frames in 30 min, ~60 loops on a
512 px field) as fast as the tracker acknowledges them, one frame in flight per microscope, so
the ack latency is the tracker's own. 50 ``WatchStatistics`` streams stay open over the
sessions the whole time. A sampler reads the tracker's RSS (/proc) and the size of its /metrics
page every second and asks gRPC health every 0.1 s (deadline 1 s). Printed: a markdown table
with the RSS and /metrics size at the start and the end, their least-squares slopes per
simulated hour, ack latency p50/p99, the slowest health answer, and the wall time. Bounded:
``--max-wall-s`` (default 540 s) stops the microscopes early, and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from bench_tracker import Population
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.v1 import tracker_pb2 as pb

SIZE_PX = 512
COMMAND = str(Path(sys.executable).parent / "loopstream-tracker")


def start_tracker(folder: Path) -> tuple[subprocess.Popen, int, int]:
    """The tracker process and its gRPC and metrics ports (from its "listening" log line)."""
    log = (folder / "tracker.log").open("w+")
    proc = subprocess.Popen(
        [
            COMMAND,
            "--db",
            str(folder / "soak.db"),
            "--no-auth",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--sync",
            "normal",
        ],
        stderr=log,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, Path(log.name).read_text()
        for line in Path(log.name).read_text().splitlines():
            entry = json.loads(line)
            if entry.get("msg") == "listening":
                return proc, entry["port"], entry["metrics_port"]
        time.sleep(0.1)
    raise TimeoutError("the tracker did not start within 60 s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def microscope(target: str, index: int, frames: list, interval_s: float, stop: threading.Event, out: dict):
    """Stream ``frames`` into a new session, one in flight; record each ack's latency."""
    client = TrackerClient(target)
    sid = client.OpenSession(
        pb.SessionSpec(microscope_id=f"soak-{index}", pixel_size_nm=0.39, frame_rate_hz=1 / interval_s)
    ).session_id
    out["sessions"].append(sid)
    acked: queue.Queue = queue.Queue()
    latencies: list[float] = []

    def messages():
        for t, loops in enumerate(frames):
            if stop.is_set():
                return
            sent = time.perf_counter()
            yield frame_message(sid, t, t * interval_s, loops, SIZE_PX, SIZE_PX, "soak", "1")
            acked.get()
            latencies.append(time.perf_counter() - sent)

    for ack in client.stream(messages()):
        assert ack.accepted, ack.error
        acked.put(ack)
    out["latencies"].extend(latencies)
    out["frames"] += len(latencies)
    client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--microscopes", type=int, default=8)
    p.add_argument("--minutes", type=float, default=30.0, help="simulated minutes per microscope")
    p.add_argument("--frame-interval-s", type=float, default=2.0, help="simulated seconds between frames")
    p.add_argument("--watchers", type=int, default=50)
    p.add_argument("--loops", type=int, default=60)
    p.add_argument("--max-wall-s", type=float, default=540.0)
    args = p.parse_args()
    n_frames = int(args.minutes * 60 / args.frame_interval_s)
    population = Population(args.loops, n_frames, size_px=SIZE_PX, lifetime=300.0)
    frames = [population.frame(t) for t in range(n_frames)]

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        proc, port, metrics_port = start_tracker(Path(tmp))
        target = f"127.0.0.1:{port}"
        stop, done = threading.Event(), threading.Event()
        out = {"sessions": [], "latencies": [], "frames": 0}
        samples: list[tuple[float, float, float]] = []  # (wall s, RSS MiB, /metrics bytes)
        health_s: list[float] = []
        health_failures: list[str] = []
        started = time.monotonic()

        def sampler():
            with grpc.insecure_channel(target) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                next_sample = 0.0
                while not done.is_set():
                    asked = time.perf_counter()
                    try:
                        health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        health_s.append(time.perf_counter() - asked)
                    except grpc.RpcError as e:
                        health_failures.append(e.code().name)
                    now = time.monotonic() - started
                    if now >= next_sample:
                        url = f"http://127.0.0.1:{metrics_port}/metrics"
                        size = len(urllib.request.urlopen(url, timeout=5).read())
                        samples.append((now, rss_mib(proc.pid), size))
                        next_sample = now + 1.0
                    time.sleep(0.1)

        sampling = threading.Thread(target=sampler, daemon=True)
        sampling.start()
        mics = [
            threading.Thread(target=microscope, args=(target, i, frames, args.frame_interval_s, stop, out))
            for i in range(args.microscopes)
        ]
        for m in mics:
            m.start()
        while len(out["sessions"]) < args.microscopes:
            time.sleep(0.05)
        watch_client = TrackerClient(target)
        watches = [
            watch_client.WatchStatistics(pb.WatchRequest(session_id=out["sessions"][i % args.microscopes]))
            for i in range(args.watchers)
        ]
        received = [0] * args.watchers

        def drain(i):
            try:
                for _ in watches[i]:
                    received[i] += 1
            except grpc.RpcError:
                pass

        drains = [threading.Thread(target=drain, args=(i,), daemon=True) for i in range(args.watchers)]
        for d in drains:
            d.start()
        deadline = started + args.max_wall_s
        for m in mics:
            m.join(max(deadline - time.monotonic(), 0))
        stopped_early = any(m.is_alive() for m in mics)
        stop.set()
        for m in mics:
            m.join()
        wall = time.monotonic() - started
        time.sleep(1.5)
        done.set()
        sampling.join()
        for w in watches:
            w.cancel()
        watch_client.close()
        proc.terminate()
        proc.wait(30)

    t, rss, size = (np.array(c) for c in zip(*samples, strict=True))
    # Slopes against simulated time: the microscopes covered frames * interval simulated seconds.
    simulated_h = out["frames"] / args.microscopes * args.frame_interval_s / 3600
    sim_h_per_wall_s = simulated_h / wall
    half = t >= t[-1] / 2  # the second half: after warm-up (imports, first allocations)
    rss_slope = np.polyfit(t[half], rss[half], 1)[0] / sim_h_per_wall_s
    size_slope = np.polyfit(t[half], size[half], 1)[0] / sim_h_per_wall_s
    lat = np.array(out["latencies"]) * 1000
    print(
        f"{args.microscopes} microscopes x {args.minutes:g} simulated min ({n_frames} frames each, "
        f"~{args.loops} loops, {SIZE_PX} px), {args.watchers} watchers"
        + (" -- STOPPED EARLY at --max-wall-s" if stopped_early else "")
    )
    print()
    print("| quantity | value |")
    print("|---|---|")
    print(f"| frames stored | {out['frames']} in {wall:.0f} s ({out['frames'] / wall:.0f} frames/s) |")
    print(f"| tracker RSS start / end (MiB) | {rss[0]:.0f} / {rss[-1]:.0f} |")
    print(f"| RSS slope, second half (MiB per simulated hour) | {rss_slope:+.1f} |")
    print(f"| /metrics size start / end (bytes) | {size[0]:.0f} / {size[-1]:.0f} |")
    print(f"| /metrics slope, second half (bytes per simulated hour) | {size_slope:+.0f} |")
    print(
        f"| ack latency p50 / p99 / max (ms) | {np.percentile(lat, 50):.1f} / {np.percentile(lat, 99):.1f} / "
        f"{lat.max():.1f} |"
    )
    health_ms = np.array(health_s) * 1000
    print(f"| health answers / failures | {len(health_ms)} / {len(health_failures)} |")
    print(f"| health p99 / max (ms) | {np.percentile(health_ms, 99):.1f} / {health_ms.max():.1f} |")
    print(f"| health answers over 100 ms | {int(np.sum(health_ms > 100))} |")
    print(f"| watch messages received (all {args.watchers}) | {sum(received)} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
