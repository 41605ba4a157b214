"""CPU throughput of the default instance model (Mask R-CNN R18-FPN): eager vs TorchScript vs ONNX Runtime.

Per tile: one real 512² tile, the top-left of ``--image`` (detections, and so the mask head's
work, depend on the image, so trained weights and a real image are used). Per frame: the 25
overlapping 512 px tiles of a 2048² frame, one call each (post-processing excluded): ``--image``
itself when it is that large (a real hirst-ti frame), else a simulated frame. Target: ONNX
Runtime >= 1.3x eager. Default weights: those of the network ``--pipeline``'s default version
serves (``models/checkpoints/<pipeline>_v<version>.pt``; a version that re-serves an earlier
network links its file).

    .venv/bin/python bench/bench_instance_model.py --threads 2 --repeats 5
    .venv/bin/python bench/bench_instance_model.py --pipeline loops_instance_ti \\
        --image ../shared/data/hirst-ti/train/imgs/frame0002.jpg --threads 2 --repeats 5
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
from loopstream.serving.triton import REPOSITORY

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "creme-ds25s" / "train" / "imgs"
FRAME_PX = 2048


def shipped_checkpoint(pipeline: str) -> Path:
    """The PyTorch weights of the network the pipeline's default version serves."""
    network = REPOSITORY / f"{pipeline}_core" / str(default_version(REPOSITORY, pipeline)) / "model.onnx"
    return ROOT / "models" / "checkpoints" / f"{pipeline}_v{network.resolve().parent.name}.pt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pipeline", default="loops_instance", help="its default version's weights")
    p.add_argument("--checkpoint", type=Path, help="other weights (default: the pipeline's)")
    p.add_argument("--image", type=Path, default=DATA / "3.png")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.checkpoint = args.checkpoint or shipped_checkpoint(args.pipeline)
    if not args.checkpoint.exists():
        p.error(f"no weights at {args.checkpoint}: give --checkpoint")
    torch.set_num_threads(args.threads)
    import cv2

    image = cv2.imread(str(args.image), cv2.IMREAD_GRAYSCALE)
    if image is None:
        p.error(f"cannot read {args.image} as an image")
    tile = standardise(image)[None, None, :512, :512]
    real_frame = min(image.shape) >= FRAME_PX
    frame = (
        image[:FRAME_PX, :FRAME_PX]
        if real_frame
        else SimulatedMicroscope(SimulationConfig(shape=(FRAME_PX, FRAME_PX)), seed=0).render(0)
    )
    tiles = cut_tiles(standardise(frame), tile_grid(frame.shape, 512, 64))
    source = args.image.name if real_frame else "the simulator"
    print(f"{args.checkpoint.name}; tile from {args.image.name}, frame from {source}")
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
