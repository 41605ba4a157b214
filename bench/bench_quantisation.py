"""int8 static quantisation (QDQ) of the default U-Net: accuracy and speed against fp32, one run.

The network is quantised with ONNX Runtime (per-channel int8 weights, int8 activations),
calibrated on real 512² tiles of the training sets: creme-ds25s images 1, 2, 4, 5, 6, 8, 9, 10,
12 and the first 8 hirst-ti images (never the held-out creme images 3, 7, 11). Both networks are
then evaluated on the held-out images (``python -m loopstream.models.evaluate``, threshold fixed
at the shipped 0.3) and timed on one 512² tile, interleaved, best of ``--repeats``. The rule for
adoption, fixed beforehand: F1 within 0.01 and mean |N_re| within 1 point of fp32.

    nice -n 10 .venv/bin/python bench/bench_quantisation.py --repeats 4
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
CALIBRATION += sorted((DATA / "hirst-ti" / "train" / "imgs").glob("*"))[:8]


class Tiles(CalibrationDataReader):
    """Standardised 512² tiles (the top-left of each image), as the pipeline feeds the network."""

    def __init__(self, paths: list[Path]) -> None:
        tiles = []
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if image is None:
                raise SystemExit(f"{path}: not a readable image; is /work/shared/data complete?")
            tiles.append(np.ascontiguousarray(standardise(image)[None, None, :512, :512]))
        self._next = iter(tiles)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tile = next(self._next, None)
        return None if tile is None else {"image": tile}


def evaluate(model: Path, out: Path) -> pd.Series:
    command = [sys.executable, "-m", "loopstream.models.evaluate", "--model", str(model)]
    command += ["--coco", str(CREME / "annotations.json"), "--ids", "3,7,11", "--threshold", "0.3"]
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True)
    summary = pd.read_csv(out / "summary.csv").set_index("image")
    return summary.loc["overall"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    fp32 = (
        REPOSITORY / "loops_semantic_core" / str(default_version(REPOSITORY, "loops_semantic")) / "model.onnx"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        quant_pre_process(str(fp32), str(work / "pre.onnx"))
        int8 = work / "int8.onnx"
        quantize_static(
            str(work / "pre.onnx"),
            str(int8),
            Tiles(CALIBRATION),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        models = {"fp32": fp32, "int8 QDQ": int8}
        scores = {name: evaluate(path, work / name.replace(" ", "_")) for name, path in models.items()}
        tile = np.random.default_rng(0).standard_normal((1, 1, 512, 512)).astype(np.float32)
        sessions = {}
        for name, path in models.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            sessions[name].run(None, {"image": tile})
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(args.repeats):  # interleaved: load swings on a shared machine hit both
            for name, session in sessions.items():
                start = time.perf_counter()
                session.run(None, {"image": tile})
                times[name].append(time.perf_counter() - start)
        sizes = {name: path.stat().st_size / 2**20 for name, path in models.items()}
    reference = scores["fp32"]
    print(
        "| network | F1 (3, 7, 11) | N_re % | mean abs N_re % | P1 | P2 | tile 512² ms | x fp32 | MiB "
        "| rule |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in scores.items():
        ok = abs(s.F1 - reference.F1) <= 0.01 and abs(s.mean_abs_N_re - reference.mean_abs_N_re) <= 1.0
        speed = min(times["fp32"]) / min(times[name])
        print(
            f"| {name} | {s.F1:.3f} | {s.N_re:+.1f} | {s.mean_abs_N_re:.1f} | {s.P1:.1f} | {s.P2:.1f} "
            f"| {1000 * min(times[name]):.0f} | {speed:.2f} | {sizes[name]:.1f} "
            f"| {'met' if ok else 'missed'} |"
        )


if __name__ == "__main__":
    main()
