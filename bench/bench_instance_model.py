"""CPU throughput of the default instance model (Mask R-CNN R18-FPN): eager vs TorchScript vs ONNX Runtime.

Per tile: one real 512² creme tile (detections, and so the mask head's work, depend on the
image, so trained weights and a real image are used). Per frame: the 25 overlapping 512 px tiles
of a 2048² simulated frame, one call each (post-processing excluded). Target: ONNX Runtime >= 1.3x
eager. Default weights: the shipped default model's (``models/checkpoints``).

    .venv/bin/python bench/bench_instance_model.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from timing import best_seconds  # this folder is on sys.path when a benchmark runs

from loopstream.core.imaging import cut_tiles, standardise, tile_grid
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.models.export_instance import (
    export_onnx,
    load_instance_checkpoint,
    onnx_tile_fn,
    torch_tile_fn,
)
from loopstream.models.export_torchscript import script_instance
from loopstream.serving.repository import default_version

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "creme-ds25s" / "train" / "imgs"
DEFAULT_VERSION = default_version(ROOT / "model_repository", "loops_instance")
SHIPPED = ROOT / "models" / "checkpoints" / f"loops_instance_v{DEFAULT_VERSION}.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=SHIPPED)
    p.add_argument("--image", type=Path, default=DATA / "3.png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    tile = standardise(cv2.imread(str(args.image), cv2.IMREAD_GRAYSCALE))[None, None, :512, :512]
    frame = SimulatedMicroscope(SimulationConfig(shape=(2048, 2048)), seed=0).render(0)
    tiles = cut_tiles(standardise(frame), tile_grid(frame.shape, 512, 64))
    scripted = script_instance(load_instance_checkpoint(args.checkpoint))  # each runtime its own copy
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(load_instance_checkpoint(args.checkpoint), Path(tmp) / "model.onnx")
        runners: dict[str, Callable[[np.ndarray], object]] = {
            "eager": torch_tile_fn(load_instance_checkpoint(args.checkpoint).eval()),
            "torchscript": lambda x: scripted(torch.from_numpy(x)),
            "onnxruntime": onnx_tile_fn(onnx_path, args.threads),
        }
        print(f"| runtime ({args.threads} threads) | tile 512² ms | x eager | frame 2048² (25 tiles) s |")
        print("|---|---|---|---|")
        eager = None
        for name, run in runners.items():
            with torch.no_grad():
                t_tile = best_seconds(lambda run=run: run(tile), args.repeats, warm_up=True)
                t_frame = best_seconds(
                    lambda run=run: [run(tiles[i : i + 1]) for i in range(len(tiles))], 1, warm_up=True
                )
            eager = eager or t_tile
            print(f"| {name} | {1000 * t_tile:.0f} | {eager / t_tile:.2f} | {t_frame:.1f} |")


if __name__ == "__main__":
    main()
