"""CPU throughput of the default semantic model: eager PyTorch vs TorchScript vs ONNX Runtime.

Per tile (one 512 x 512 standardised tile) and per frame (a 2048 x 2048 frame prepared by the
served ``Pipeline`` into its overlapping 512 px tiles, logits stitched; post-processing
excluded). Weights do not change
the speed, so an untrained model of the shipped architecture is measured.

    .venv/bin/python bench/bench_models.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import best_seconds  # this folder is on sys.path when a benchmark runs

from loopstream.core.imaging import stitch
from loopstream.models.architectures import build_model
from loopstream.models.export import export_onnx
from loopstream.models.predict import LogitsFn, onnx_logits, torch_logits
from loopstream.serving.pipelines import Pipeline
from loopstream.serving.spec import PipelineSpec

PIPELINE = Pipeline(PipelineSpec())  # the serving's tiling: 512 px tiles, 64 px overlap


def frame_logits(run: LogitsFn, frame: np.ndarray) -> np.ndarray:
    """Stitched logits of a frame tiled as the served pipeline tiles it, one tile per call."""
    prepared = PIPELINE.prepare(frame)
    logits = np.concatenate([run(tile[None]) for tile in prepared.tiles_input])
    return stitch(logits, prepared.tiles, prepared.shape)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="unet_r18")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--frame-px", type=int, default=2048)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.arch).eval()
    tile = np.random.default_rng(0).standard_normal((1, 1, 512, 512)).astype(np.float32)
    frame = np.random.default_rng(1).integers(0, 65535, (args.frame_px, args.frame_px)).astype(np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx")
        scripted = torch.jit.trace(model, torch.from_numpy(tile))
        runners: dict[str, LogitsFn] = {
            "eager": torch_logits(model),
            "torchscript": torch_logits(scripted),
            "onnxruntime": onnx_logits(path, args.threads),
        }
        print(f"{args.arch}, {args.threads} threads; best of {args.repeats}")
        eager_tile = None
        for name, run in runners.items():
            t_tile = best_seconds(lambda run=run: run(tile), args.repeats, warm_up=True)
            t_frame = best_seconds(
                lambda run=run: frame_logits(run, frame), max(1, args.repeats // 3), warm_up=True
            )
            eager_tile = eager_tile or t_tile
            print(
                f"{name:12s} tile 512^2: {1 / t_tile:6.2f} tiles/s ({1000 * t_tile:6.0f} ms, "
                f"{eager_tile / t_tile:4.2f}x eager)   frame {args.frame_px}^2: {t_frame:5.2f} s"
            )


if __name__ == "__main__":
    main()
