"""Tracker throughput and memory, printed as a markdown table.

    .venv/bin/python bench/bench_tracker.py [--quick] [--only-loops 200]

Columns:
* link + drift: ``SessionLinker`` and ``DriftEstimator`` alone (the online tracking itself);
* engine: validation, linking, drift, statistics and the SQLite commit, with ``--sync full``
  (fsync per frame) and ``--sync normal`` (WAL without fsync: survives tracker crashes only);
* gRPC: the same through ``StreamDetections`` on 127.0.0.1 (``--sync full``), one ack per frame,
  with one stream and with four concurrent sessions, each client in its own process (as
  microscopes are; the clients share this machine's cores with the tracker), the loops sent as one
  ``loop_table`` as the shipped client does; and one stream of ``Loop`` messages, the form of
  clients older than the table.
Then a long run at 30 fps (simulated time) through the engine, with the resident set size at
checkpoints: bounded memory means the RSS stops growing while the store on disk grows.

Frames come from a vectorised loop population (Poisson births, exponential lifetimes, linear
growth, constant stage drift, 0.2 px jitter); the full simulator's overlap-avoiding placement is
quadratic in the number of loops, too slow for an hour of 200 loops per frame.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from loopstream.tracker.client import TrackerClient, frame_message
from loopstream.tracker.drift import DriftEstimator
from loopstream.tracker.engine import Defaults, TrackerEngine
from loopstream.tracker.linking import SessionLinker
from loopstream.tracker.server import ServerConfig, serve
from loopstream.tracker.store import Store
from loopstream.tracker.validation import LOOP_COLUMNS, FrameInput
from loopstream.v1 import tracker_pb2 as pb

PIXEL_NM = 0.390625
FPS = 30.0


class Population:
    """``loops`` alive on average in a ``size_px`` square field, turning over every ~``lifetime`` frames."""

    def __init__(
        self, loops: int, n_frames: int, size_px: int = 2048, lifetime: float = 600.0, seed: int = 0
    ):
        rng = np.random.default_rng(seed)
        total = int(loops + loops / lifetime * n_frames)
        self.birth = np.concatenate([np.full(loops, -1.0), rng.uniform(0, n_frames, total - loops)])
        self.death = self.birth + rng.exponential(lifetime, total) + 5
        self.xy = rng.uniform(0, size_px, (total, 2))
        self.major0 = rng.uniform(6, 20, total)
        self.growth = rng.uniform(0.0, 0.02, total)
        self.size_px = size_px
        self.rng = rng

    def frame(self, t: int) -> pd.DataFrame:
        alive = np.flatnonzero((self.birth <= t) & (self.death > t))
        n = alive.size
        # Loops drift with the stage; the field wraps, so the frame keeps its loops (loops that leave
        # at one edge come back at the other as new tracks) and every centre stays inside it.
        xy = (self.xy[alive] + np.array([0.05, -0.03]) * t) % self.size_px + self.rng.normal(0, 0.2, (n, 2))
        major = self.major0[alive] + self.growth[alive] * (t - self.birth[alive])
        return pd.DataFrame(
            {
                "score": np.full(n, 0.9),
                "x_px": xy[:, 0],
                "y_px": xy[:, 1],
                "major_px": major,
                "minor_px": 0.7 * major,
                "angle_deg": np.zeros(n),
                "area_px": np.pi / 4 * 0.7 * major**2,
                "bbox_x_px": xy[:, 0] - major / 2,
                "bbox_y_px": xy[:, 1] - major / 2,
                "bbox_width_px": major,
                "bbox_height_px": major,
            },
            columns=LOOP_COLUMNS,
        )


def link_only(frames: list[pd.DataFrame]) -> float:
    linker, drift = SessionLinker(8.0 / PIXEL_NM, 3), DriftEstimator(3)
    started = time.perf_counter()
    for t, f in enumerate(frames):
        x, y = f.x_px.to_numpy(), f.y_px.to_numpy()
        px, py = drift.predict()
        ids = linker.link(np.column_stack([x - px, y - py]), t)
        drift.update(ids, x, y, t)
    return len(frames) / (time.perf_counter() - started)


def _spec() -> dict:
    return {"pixel_size_nm": PIXEL_NM, "frame_rate_hz": FPS, "dose_rate_ions_cm2_s": 1e11}


def engine_run(engine: TrackerEngine, frames, size_px: int, on_checkpoint=None, every: int = 0) -> float:
    sid = engine.open_session(_spec())["session_id"]
    started = time.perf_counter()
    n = 0
    for t, f in enumerate(frames):
        # The loops as one array, the container they arrive in from the wire.
        result = engine.ingest(FrameInput(sid, t, t / FPS, "bench", "", size_px, size_px, f.to_numpy()))
        assert result.accepted, result.error
        n += 1
        if on_checkpoint and every and (t + 1) % every == 0:
            on_checkpoint(t + 1, time.perf_counter() - started)
    return n / (time.perf_counter() - started)


def _stream_session(
    port: int, session_id: str, loops: int, n_frames: int, size_px: int, loop_table: bool, ready, start, done
) -> None:
    """One microscope's client, in its own process as in a deployment: builds its messages, waits
    for the start, streams them and reports (acks, all accepted)."""
    pop = Population(loops, n_frames, size_px)
    messages = [
        frame_message(session_id, t, t / FPS, pop.frame(t), size_px, size_px, loop_table=loop_table)
        for t in range(n_frames)
    ]
    client = TrackerClient(f"127.0.0.1:{port}")
    ready.put(True)
    start.wait()
    acks = list(client.stream(messages))
    done.put((len(acks), all(a.accepted for a in acks)))
    client.close()


def grpc_run(
    db: Path, loops: int, n_frames: int, size_px: int, sessions: int = 1, loop_table: bool = True
) -> float:
    """Total frames/s of ``sessions`` concurrent streams (one session and client process each) into
    one tracker; ``loop_table=False`` sends Loop messages, as clients older than the table do."""
    running = serve(ServerConfig(db=db, port=0, metrics_port=-1))
    client = TrackerClient(f"127.0.0.1:{running.port}")
    spawn = multiprocessing.get_context("spawn")
    ready, start, done = spawn.Queue(), spawn.Event(), spawn.Queue()
    try:
        session_ids = [client.OpenSession(pb.SessionSpec(**_spec())).session_id for _ in range(sessions)]
        processes = [
            spawn.Process(
                target=_stream_session,
                args=(running.port, sid, loops, n_frames, size_px, loop_table, ready, start, done),
            )
            for sid in session_ids
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=300)
        started = time.perf_counter()
        start.set()
        results = [done.get(timeout=600) for _ in processes]
        elapsed = time.perf_counter() - started
        for process in processes:
            process.join()
        assert results == [(n_frames, True)] * sessions, results
    finally:
        client.close()
        running.stop(0.5)
    return sessions * n_frames / elapsed


def rss_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames (smoke test of the benchmark)")
    parser.add_argument(
        "--hour-frames", type=int, default=0, help="frames of the long run (default: 6 min at 30 fps)"
    )
    parser.add_argument("--tmp", default=None, help="directory for the SQLite files (default: system temp)")
    parser.add_argument(
        "--memory-cost",
        action="store_true",
        help="only the engine at 200 loops/frame with linker memory 3 and 8, alternating, twice",
    )
    parser.add_argument(
        "--only-loops",
        type=int,
        default=0,
        help="only the throughput table's row at this many loops/frame (200 or 1000), no long run",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tracker-", dir=args.tmp) as tmp:  # GBs: never left behind
        if args.memory_cost:
            memory_cost(Path(tmp), 60 if args.quick else 300)
            return
        loop_counts = (args.only_loops,) if args.only_loops else (200, 1000)
        throughput(Path(tmp), 60 if args.quick else 300, loop_counts)
        if args.only_loops:
            return
        memory(Path(tmp), args.hour_frames or (600 if args.quick else int(6 * 60 * FPS)))


def throughput(tmp: Path, n_frames: int, loop_counts: tuple[int, ...]) -> None:
    rows = []
    for loops in loop_counts:
        size_px = 2048 if loops == 200 else 4096  # same areal density, ~100 px between loops
        pop = Population(loops, n_frames, size_px)
        frames = [pop.frame(t) for t in range(n_frames)]
        mean_loops = np.mean([len(f) for f in frames])
        link = link_only(frames)
        with Store(tmp / f"engine{loops}.db") as store:
            engine = engine_run(TrackerEngine(store), frames, size_px)
        with Store(tmp / f"normal{loops}.db", "NORMAL") as store:
            normal = engine_run(TrackerEngine(store), frames, size_px)
        wire = grpc_run(tmp / f"grpc{loops}.db", loops, n_frames, size_px)
        wire4 = grpc_run(tmp / f"grpc4x{loops}.db", loops, n_frames, size_px, sessions=4)
        old_wire = grpc_run(tmp / f"grpc-old{loops}.db", loops, n_frames, size_px, loop_table=False)
        rows.append((loops, mean_loops, link, engine, normal, wire, wire4, old_wire))

    print(f"\n### Tracker throughput ({n_frames} frames per session, frames/s)\n")
    print(
        "| loops/frame (target) | mean loops/frame | link + drift | engine, --sync full "
        "| engine, --sync normal | gRPC, 1 stream | gRPC, 4 streams (total) | gRPC, 1 stream, Loop messages |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for loops, mean_loops, *figures in rows:
        rates = " | ".join(f"{r:.0f}" for r in (mean_loops, *figures))
        print(f"| {loops} | {rates} |")


def memory_cost(tmp: Path, n_frames: int) -> None:
    """Engine frames/s with the linker's memory at 3 (the old default) and 8, in one run."""
    pop = Population(200, n_frames, 2048)
    frames = [pop.frame(t) for t in range(n_frames)]
    print(f"\n### Engine frames/s by linker memory (200 loops/frame, {n_frames} frames)\n")
    print("| round | memory | engine, --sync full | engine, --sync normal |")
    print("|---|---|---|---|")
    for round_ in (1, 2):
        for memory_frames in (3, 8):
            rates = []
            for sync in ("FULL", "NORMAL"):
                with Store(tmp / f"memory{memory_frames}-{sync}-{round_}.db", sync) as store:
                    engine = TrackerEngine(store, Defaults(memory_frames=memory_frames))
                    rates.append(engine_run(engine, frames, 2048))
            print(f"| {round_} | {memory_frames} | {rates[0]:.0f} | {rates[1]:.0f} |")


def memory(tmp: Path, hour: int) -> None:
    pop = Population(200, hour, 2048, seed=1)
    checkpoints: list[tuple[int, float, float, float]] = []
    db = tmp / "hour.db"

    def checkpoint(frames_done: int, seconds: float) -> None:
        checkpoints.append((frames_done, seconds, rss_mib(), db.stat().st_size / 2**20))

    with Store(db) as store:
        checkpoint(0, 0.0)
        engine_run(
            TrackerEngine(store), (pop.frame(t) for t in range(hour)), 2048, checkpoint, max(hour // 6, 1)
        )
    scaled = "" if hour >= 3600 * FPS else f" (scaled down: {hour / FPS / 60:.1f} min of an hour)"
    print(f"\n### Memory over a long session at {FPS:.0f} fps, 200 loops/frame{scaled}\n")
    print("| frames | simulated time (min) | wall time (s) | tracker RSS (MiB) | store on disk (MiB) |")
    print("|---|---|---|---|---|")
    for frames_done, seconds, rss, disk in checkpoints:
        print(f"| {frames_done} | {frames_done / FPS / 60:.1f} | {seconds:.0f} | {rss:.0f} | {disk:.0f} |")


if __name__ == "__main__":
    main()
