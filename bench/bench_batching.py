"""How the core model's dynamic-batching queue delay trades latency for batch size, on this machine.

For each max_queue_delay (µs), a fresh local Triton serves the shipped pipeline while 4 simulated
microscopes stream 512² frames at once; reported: total frames/s, per-frame p50/p99 latency, and
the mean core batch size (inference count / execution count from Triton's statistics).

    .venv/bin/python bench/bench_batching.py --delays-us 0 2000 20000 --frames 8
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from loopstream.client.inference import FrameResult, InferenceStream
from loopstream.client.sources import Frame
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.serving.repository import build_flavour
from loopstream.serving.triton import REPOSITORY, TritonOptions, TritonPorts, start_triton

CORE = "loops_semantic_core"


def with_queue_delay(source: Path, target: Path, delay_us: int) -> Path:
    build_flavour(source, target, "local")
    path = target / CORE / "config.pbtxt"
    config = text_format.Parse(path.read_text(), mc.ModelConfig())
    config.dynamic_batching.max_queue_delay_microseconds = delay_us
    path.write_text(text_format.MessageToString(config))
    return target


def stream_microscopes(url: str, frames: list[list[Frame]]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()

    def record(result: FrameResult) -> None:
        if result.error:
            raise RuntimeError(result.error)
        with lock:
            latencies.append(result.latency_s)

    def run(own: list[Frame]) -> None:
        stream = InferenceStream(url, "loops_semantic", record, max_in_flight=2)
        for frame in own:
            stream.submit(frame)
        stream.close()

    threads = [threading.Thread(target=run, args=(f,)) for f in frames]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(len(f) for f in frames) / (time.perf_counter() - start), latencies


def _core_counts(client: triton.InferenceServerClient) -> tuple[int, int]:
    """(inferences, executions) of the core model, over all its loaded versions."""
    stats = client.get_inference_statistics(CORE).model_stats
    return sum(s.inference_count for s in stats), sum(s.execution_count for s in stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays-us", type=int, nargs="+", default=[0, 2000, 20000])
    parser.add_argument("--frames", type=int, default=8, help="frames per microscope")
    parser.add_argument("--microscopes", type=int, default=4)
    args = parser.parse_args()
    frames = [
        [
            Frame(i, i / 10, SimulatedMicroscope(SimulationConfig(), seed).render(i), "sim")
            for i in range(args.frames)
        ]
        for seed in range(args.microscopes)
    ]
    rows = []
    for delay in args.delays_us:
        with tempfile.TemporaryDirectory() as tmp:
            repository = with_queue_delay(REPOSITORY, Path(tmp) / "repository", delay)
            options = TritonOptions(
                repository=repository,
                ports=TritonPorts.ephemeral(),
                model_control="explicit",
                load_models=(CORE, "loops_semantic"),
            )
            server = start_triton(options, Path(tmp) / "cache", Path(tmp) / "tritonserver.log")
            try:
                url = f"127.0.0.1:{options.ports.grpc}"
                stream_microscopes(url, [f[:1] for f in frames])  # warm every instance
                with triton.InferenceServerClient(url) as client:
                    before = _core_counts(client)
                    fps, latencies = stream_microscopes(url, frames)
                    after = _core_counts(client)
            finally:
                server.stop()
        batch = (after[0] - before[0]) / (after[1] - before[1])
        p50, p99 = np.percentile(latencies, [50, 99])
        rows.append((delay, fps, p50, p99, batch))
    print(
        f"| queue delay µs | frames/s ({args.microscopes} microscopes, 512²) "
        "| p50 s | p99 s | mean core batch |"
    )
    print("|---|---|---|---|---|")
    for delay, fps, p50, p99, batch in rows:
        print(f"| {delay} | {fps:.2f} | {p50:.2f} | {p99:.2f} | {batch:.2f} |")


if __name__ == "__main__":
    main()
