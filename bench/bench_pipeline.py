"""Throughput of the served pipeline against the same model in-process, in one run.

For each frame size (simulated frames, or copies of one real ``--image``): frames/s of
(a) the pipeline's served code calling ONNX Runtime in this process,
(b) the same frames streamed through the local tritonserver (client -> Triton only),
(c) the same through Triton on 4 concurrent streams (the dynamic-batching gain), and (d) end to
end (client -> Triton -> tracker, stored), with 1 and 4 concurrent microscopes.
Ratios against (a) are what to read: this 2-core machine is noisy, ratios in one run less so.

    .venv/bin/python bench/bench_pipeline.py --sizes 512 1024 2048 --frames 16
    .venv/bin/python bench/bench_pipeline.py --pipeline loops_instance_ti \\
        --image ../shared/data/hirst-ti/train/imgs/frame0002.jpg --frames 2
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import cv2
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


def real_frames(image: np.ndarray, n: int, name: str) -> list[Frame]:
    """``n`` frames of one real image: the detection count, and so the instance pipelines' work,
    depends on the image, which a simulated frame does not have for every material."""
    return [Frame(i, i / 10, image, f"{name}:{i}") for i in range(n)]


def in_process(frames: list[Frame], model: OnnxModel, pipeline: Pipeline) -> float:
    pipeline.analyse(frames[0].image, model.run)  # warm-up
    start = time.perf_counter()
    for frame in frames:
        pipeline.analyse(frame.image, model.run)
    return len(frames) / (time.perf_counter() - start)


def through_triton(
    stack: LocalStack, pipeline: str, frames: list[Frame], streams: int
) -> tuple[float, list[float]]:
    """Frames/s summed over ``streams`` concurrent streams of the same frames, and their latencies
    (submission to answer: with several frames in flight, a frame waits for those before it)."""
    latencies: list[float] = []
    lock = threading.Lock()

    def record(result: FrameResult) -> None:
        with lock:
            latencies.append(_ok(result))

    def run() -> None:
        stream = InferenceStream(stack.triton_url, pipeline, record)
        for frame in frames:
            stream.submit(frame)
        stream.close()

    warm = InferenceStream(stack.triton_url, pipeline, _ok)
    warm.submit(frames[0])
    warm.close()
    threads = [threading.Thread(target=run) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return streams * len(frames) / (time.perf_counter() - start), latencies


def end_to_end(stack: LocalStack, spec: pb.SessionSpec, frames: list[Frame], microscopes: int) -> float:
    """Frames/s summed over ``microscopes`` sessions streaming the same frames at once."""
    endpoints = Endpoints(stack.triton_url, stack.tracker_url, stack.token)
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
    parser.add_argument("--pipeline", default="loops_semantic", help="served pipeline, its default version")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--image", type=Path, help="a real frame instead of simulated ones (then no --sizes)")
    parser.add_argument("--frames", type=int, default=16, help="at 512²; fewer at larger sizes, same pixels")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    args = parser.parse_args()
    image = None if args.image is None else cv2.imread(str(args.image), cv2.IMREAD_GRAYSCALE)
    if args.image is not None and image is None:
        parser.error(f"cannot read {args.image} as an image")
    version = str(default_version(args.repository, args.pipeline))
    model = OnnxModel(args.repository / f"{args.pipeline}_core" / version / "model.onnx")
    pipeline = Pipeline(PipelineSpec.read(args.repository / args.pipeline / version / "pipeline.json"))
    # The pipeline's own pixel size, so a session is analysed at the scale in-process is.
    session = pb.SessionSpec(
        pixel_size_nm=pipeline.spec.pixel_nm or 0.39, frame_rate_hz=10.0, model_name=args.pipeline
    )
    sizes = args.sizes if image is None else [max(image.shape)]
    print(f"{args.pipeline} version {version}, {'simulated frames' if image is None else args.image.name}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(Path(tmp), repository=args.repository) as stack:
        for size in sizes:
            n = max(2, args.frames * 512**2 // size**2)
            frames = simulated_frames(size, n) if image is None else real_frames(image, n, args.image.name)
            local = in_process(frames, model, pipeline)
            served, latencies = through_triton(stack, args.pipeline, frames, 1)
            served_4, _ = through_triton(stack, args.pipeline, frames, 4)
            e2e_1 = end_to_end(stack, session, frames, 1)
            e2e_4 = end_to_end(stack, session, frames, 4)
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
            f"| {size}² | {n} | {local:.3g} | {served:.3g} ({served / local:.2f}) | {served_4:.3g} "
            f"({served_4 / served:.2f}) | {e2e_1:.3g} ({e2e_1 / local:.2f}) "
            f"| {e2e_4:.3g} ({e2e_4 / local:.2f}) | {p50:.2f} / {p99:.2f} |"
        )


if __name__ == "__main__":
    main()
