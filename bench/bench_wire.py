"""Frames/s into Triton with a no-op pipeline: what the wire and the client cost, per transport.

Full 2048 x 2048 uint16 camera frames (8 MiB each) over one gRPC stream with a bounded window,
sent in the request body and through system shared memory. Target: >= 30 frames/s over gRPC,
i.e. one camera at full rate.

    .venv/bin/python bench/bench_wire.py --frames 150
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from loopstream.client.inference import FrameResult, InferenceStream
from loopstream.client.sources import Frame
from loopstream.serving.repository import add_noop_pipeline
from loopstream.serving.triton import TritonOptions, TritonPorts, start_triton


def frames_per_s(url: str, model: str, frames: list[Frame], shared_memory: bool, window: int) -> float:
    failures: list[str] = []

    def check(result: FrameResult) -> None:
        if result.error:
            failures.append(result.error)

    stream = InferenceStream(url, model, check, max_in_flight=window, shared_memory=shared_memory)
    stream.submit(frames[0])
    stream.drain()
    start = time.perf_counter()
    for frame in frames:
        stream.submit(frame)
    stream.close()
    elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(failures[0])
    return len(frames) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--window", type=int, default=8, help="frames in flight")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 65535, (args.size, args.size), dtype=np.uint16) for _ in range(4)]
    frames = [Frame(i, i / 30, images[i % 4], "random") for i in range(args.frames)]
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        model = add_noop_pipeline(repository)
        options = TritonOptions(repository=repository, ports=TritonPorts.ephemeral())
        server = start_triton(options, Path(tmp) / "cache", Path(tmp) / "tritonserver.log")
        try:
            url = f"127.0.0.1:{options.ports.grpc}"
            grpc_fps = frames_per_s(url, model, frames, False, args.window)
            shm_fps = frames_per_s(url, model, frames, True, args.window)
        finally:
            server.stop()
    mib_per_s = args.size * args.size * 2 / 2**20
    print(f"| transport | frames/s ({args.size}^2 uint16) | MiB/s | vs 30 fps camera |")
    print("|---|---|---|---|")
    for name, fps in (("gRPC (in-band)", grpc_fps), ("system shared memory", shm_fps)):
        print(f"| {name} | {fps:.1f} | {fps * mib_per_s:.0f} | {fps / 30:.2f}x |")


if __name__ == "__main__":
    main()
