"""int8 static quantisation (QDQ) of a default network: accuracy and speed against fp32, one run.

``--family semantic`` (the U-Net, every op ONNX Runtime quantises) or ``--family instance`` (the
Mask R-CNN; only the convolutions of its ResNet-18 backbone and FPN, the bulk of its arithmetic:
its RPN, box and mask heads and their RoIAlign, NMS and TopK stay float32). ONNX Runtime,
per-channel int8 weights, int8 activations, calibrated on real 512² tiles of the training sets:
creme-ds25s images 1, 2, 4, 5, 6, 8, 9, 10, 12 and the first 8 hirst-ti images that are not held
out (never the held-out creme images 3, 7, 11, nor hirst 203, 743, 1204, 1743). Both networks are
then evaluated on the held-out creme images through the served pipeline (``python -m
loopstream.models.evaluate``, the version's own threshold: 0.3 semantic, 0.8 instance) and timed
on the first calibration tile, interleaved, best of ``--repeats``. The rule for adoption, fixed
before any run: F1 within 0.01 and mean |N_re| within 1 point of fp32, and faster than fp32.

    nice -n 10 .venv/bin/python bench/bench_quantisation.py --family semantic --repeats 4
    nice -n 10 .venv/bin/python bench/bench_quantisation.py --family instance --repeats 3
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from loopstream.core.imaging import standardise
from loopstream.serving.repository import default_version
from loopstream.serving.triton import REPOSITORY

DATA = REPOSITORY.parent.parent / "shared" / "data"
CREME = DATA / "creme-ds25s" / "train"
CALIBRATION = [CREME / "imgs" / f"{i}.png" for i in (1, 2, 4, 5, 6, 8, 9, 10, 12)]
HELD_OUT_HIRST = {203, 743, 1204, 1743}  # frameNNNN.jpg
CALIBRATION += [
    path
    for path in sorted((DATA / "hirst-ti" / "train" / "imgs").glob("frame*.jpg"))
    if int(path.stem.removeprefix("frame")) not in HELD_OUT_HIRST
][:8]
PIPELINES = {"semantic": "loops_semantic", "instance": "loops_instance"}


def read_tiles(paths: list[Path]) -> list[np.ndarray]:
    """Standardised 512² tiles (the top-left of each image), as the pipeline feeds the network."""
    tiles = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"{path}: not a readable image; is /work/shared/data complete?")
        tiles.append(np.ascontiguousarray(standardise(image)[None, None, :512, :512]))
    return tiles


class Tiles(CalibrationDataReader):
    def __init__(self, tiles: list[np.ndarray]) -> None:
        self._next = iter(tiles)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._next, None)
        return None if tile is None else {"image": tile}


def quantised_nodes(model: Path, family: str) -> list[str]:
    """The nodes to quantise: all (an empty list) for the U-Net, the backbone and FPN
    convolutions for Mask R-CNN."""
    if family == "semantic":
        return []
    nodes = onnx.load(str(model)).graph.node
    return [n.name for n in nodes if n.op_type == "Conv" and n.name.startswith("/model/backbone/")]


def evaluate(pipeline: Path, network: Path, out: Path) -> pd.Series:
    command = [sys.executable, "-m", "loopstream.models.evaluate", "--pipeline", str(pipeline)]
    command += ["--network", str(network), "--coco", str(CREME / "annotations.json"), "--ids", "3,7,11"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True)
    summary = pd.read_csv(out / "summary.csv").set_index("image")
    return summary.loc["overall"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=sorted(PIPELINES), default="semantic")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    name = PIPELINES[args.family]
    version = str(default_version(REPOSITORY, name))
    pipeline, fp32 = REPOSITORY / name / version, REPOSITORY / f"{name}_core" / version / "model.onnx"
    tiles = read_tiles(CALIBRATION)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # ONNX Runtime's symbolic shape inference cannot follow Mask R-CNN's anchors: ONNX's own only
        quant_pre_process(str(fp32), str(work / "pre.onnx"), skip_symbolic_shape=args.family == "instance")
        int8 = work / "int8.onnx"
        started = time.perf_counter()
        quantize_static(
            str(work / "pre.onnx"),
            str(int8),
            Tiles(tiles),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=quantised_nodes(fp32, args.family),
        )
        print(f"calibrated on {len(tiles)} tiles in {time.perf_counter() - started:.0f} s", flush=True)
        models = {"fp32": fp32, "int8 QDQ": int8}
        scores = {
            label: evaluate(pipeline, path, work / label.replace(" ", "_")) for label, path in models.items()
        }
        sessions = {}
        for label, path in models.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            sessions[label] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            sessions[label].run(None, {"image": tiles[0]})
        times: dict[str, list[float]] = {label: [] for label in models}
        for _ in range(args.repeats):  # interleaved: load swings on a shared machine hit both
            for label, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"image": tiles[0]})
                times[label].append(time.perf_counter() - start)
        sizes = {label: path.stat().st_size / 2**20 for label, path in models.items()}
    reference = scores["fp32"]
    print(f"{name} v{version}")
    print(
        "| network | F1 (3, 7, 11) | N_re % | mean abs N_re % | P1 | P2 | tile 512² ms | x fp32 | MiB "
        "| rule |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, s in scores.items():
        speed = min(times["fp32"]) / min(times[label])
        close = abs(s.F1 - reference.F1) <= 0.01 and abs(s.mean_abs_N_re - reference.mean_abs_N_re) <= 1.0
        ok = close and (label == "fp32" or speed > 1.0)
        print(
            f"| {label} | {s.F1:.3f} | {s.N_re:+.1f} | {s.mean_abs_N_re:.1f} | {s.P1:.1f} | {s.P2:.1f} "
            f"| {1000 * min(times[label]):.0f} | {speed:.2f} | {sizes[label]:.1f} "
            f"| {'met' if ok else 'missed'} |"
        )


if __name__ == "__main__":
    main()
