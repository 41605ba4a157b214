"""Throughput of the served pipeline against the same model in-process, in one run.

For each frame size: frames/s of (a) the pipeline code calling ONNX Runtime in this process,
(b) the same frames streamed through the local tritonserver (client -> Triton only),
(c) the same through Triton on 4 concurrent streams (the dynamic-batching gain), and (d) end to
end (client -> Triton -> tracker, stored), with 1 and 4 concurrent microscopes.
Ratios against (a) are what to read: this 2-core machine is noisy, ratios in one run less so.

    .venv/bin/python bench/bench_pipeline.py --sizes 512 1024 2048 --frames 16
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from loopstream.client.inference import FrameResult, InferenceStream
from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import Frame
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.serving.core_models import OnnxModel
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.repository import default_version
from loopstream.serving.triton import REPOSITORY
from loopstream.v1 import tracker_pb2 as pb


def simulated_frames(size: int, n: int, seed: int = 0) -> list[Frame]:
    microscope = SimulatedMicroscope(SimulationConfig(shape=(size, size), n_frames=n), seed)
    return [Frame(i, i / 10, microscope.render(i), f"sim:{i}") for i in range(n)]


def in_process(frames: list[Frame], model: OnnxModel, pipeline: Pipeline) -> float:
    pipeline.analyse(frames[0].image, model.run)  # warm-up
    start = time.perf_counter()
    for frame in frames:
        pipeline.analyse(frame.image, model.run)
    return len(frames) / (time.perf_counter() - start)


def through_triton(stack: LocalStack, frames: list[Frame], streams: int) -> tuple[float, list[float]]:
    """Frames/s summed over ``streams`` concurrent streams of the same frames, and their latencies."""
    latencies: list[float] = []
    lock = threading.Lock()

    def record(result: FrameResult) -> None:
        with lock:
            latencies.append(_ok(result))

    def run() -> None:
        stream = InferenceStream(stack.triton_url, "loops_semantic", record)
        for frame in frames:
            stream.submit(frame)
        stream.close()

    warm = InferenceStream(stack.triton_url, "loops_semantic", _ok)
    warm.submit(frames[0])
    warm.close()
    threads = [threading.Thread(target=run) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return streams * len(frames) / (time.perf_counter() - start), latencies


def end_to_end(stack: LocalStack, frames: list[Frame], microscopes: int) -> float:
    """Frames/s summed over ``microscopes`` sessions streaming the same frames at once."""
    endpoints = Endpoints(stack.triton_url, stack.tracker_url, stack.token)
    spec = pb.SessionSpec(pixel_size_nm=0.39, frame_rate_hz=10.0)
    sessions = [MicroscopeSession(endpoints, spec) for _ in range(microscopes)]

    def run(session: MicroscopeSession) -> None:
        for frame in frames:
            session.submit(frame)
        report = session.close()
        assert report.frames_stored == len(frames), report.summary()

    threads = [threading.Thread(target=run, args=(s,)) for s in sessions]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return microscopes * len(frames) / (time.perf_counter() - start)


def _ok(result: FrameResult) -> float:
    if result.error:
        raise RuntimeError(result.error)
    return result.latency_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--frames", type=int, default=16, help="at 512²; fewer at larger sizes, same pixels")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args()
    served = str(default_version(args.repository, "loops_semantic"))
    model = OnnxModel(args.repository / "loops_semantic_core" / served / "model.onnx")
    pipeline = Pipeline(PipelineSpec.read(args.repository / "loops_semantic" / served / "pipeline.json"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp), repository=args.repository) as stack:
        for size in args.sizes:
            frames = simulated_frames(size, max(2, args.frames * 512**2 // size**2))
            local = in_process(frames, model, pipeline)
            served, latencies = through_triton(stack, frames, 1)
            served_4, _ = through_triton(stack, frames, 4)
            e2e_1 = end_to_end(stack, frames, 1)
            e2e_4 = end_to_end(stack, frames, 4)
            p50, p99 = np.percentile(latencies, [50, 99])
            rows.append((size, len(frames), local, served, served_4, e2e_1, e2e_4, p50, p99))
    print(
        "| frame px | frames | in-process fr/s | Triton 1 stream fr/s (ratio) "
        "| Triton 4 streams fr/s (gain) | end-to-end 1 microscope fr/s (ratio) "
        "| end-to-end 4 microscopes fr/s (ratio) | Triton p50 / p99 s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size, n, local, served, served_4, e2e_1, e2e_4, p50, p99 in rows:
        print(
            f"| {size}² | {n} | {local:.2f} | {served:.2f} ({served / local:.2f}) | {served_4:.2f} "
            f"({served_4 / served:.2f}) | {e2e_1:.2f} ({e2e_1 / local:.2f}) "
            f"| {e2e_4:.2f} ({e2e_4 / local:.2f}) | {p50:.2f} / {p99:.2f} |"
        )


if __name__ == "__main__":
    main()
