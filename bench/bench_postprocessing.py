"""Semantic post-processing per 2048² frame, on one core: the full-frame path vs the served one.

The shipped U-Net's logits for simulated 2048² frames (computed once, not timed), then, per
frame, best of ``--repeats``: (a) the full-frame path the pipeline took until now and evaluation
still takes (stitch the whole frame, sigmoid, scipy labels, whole-frame watershed, one ellipse per
region), (b) the served path (``semantic.finish_frame``: threshold once, everything else on crops;
``Pipeline.finish`` then applies its plausibility filter, not timed here), and
the frame preparation (validate, standardise, cut tiles) that shares a pipeline instance's core.
Both give the same detections (checked here too; tests/test_postprocessing.py proves it). CPU time
of this process (OpenCV on one thread), so other jobs on the machine inflate it less than wall
time; the ratio is what to read. From (b) + preparation: the pipeline instances 4 microscopes at
30 frames/s keep busy.

    nice -n 10 .venv/bin/python bench/bench_postprocessing.py --frames 3 --repeats 5
"""

from __future__ import annotations

import argparse
import math
import time

import cv2
import numpy as np
import pandas as pd
from timing import best_seconds  # this folder is on sys.path when a benchmark runs
from tqdm import tqdm

from loopstream.core.ellipses import detections_from_labels, labels_from_probability, probability
from loopstream.core.imaging import stitch
from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.serving import semantic
from loopstream.serving.core_models import OnnxModel
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.repository import default_version
from loopstream.serving.triton import REPOSITORY


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--microscopes", type=int, default=4)
    p.add_argument("--fps", type=float, default=30.0)
    args = p.parse_args()
    cv2.setNumThreads(1)
    version = default_version(REPOSITORY, "loops_semantic")
    spec = PipelineSpec.read(REPOSITORY / "loops_semantic" / str(version) / "pipeline.json")
    pipeline = Pipeline(spec)
    network = OnnxModel(REPOSITORY / "loops_semantic_core" / str(version) / "model.onnx", intra_op_threads=2)
    microscope = SimulatedMicroscope(SimulationConfig(shape=(args.size, args.size), n_frames=args.frames), 0)

    def full_frame(outputs, prepared) -> pd.DataFrame:
        logits = np.concatenate([o["logits"] for o in outputs])
        maps = probability(stitch(logits, prepared.tiles, prepared.shape))
        labels = labels_from_probability(maps[0], maps[1], spec.threshold, spec.min_area_px)
        return detections_from_labels(labels, maps[0])

    def served(outputs, prepared) -> pd.DataFrame:
        """``Pipeline.finish`` before its plausibility filter (which the full-frame path lacks)."""
        logits = [tile for o in outputs for tile in o["logits"]]
        return semantic.finish_frame(logits, prepared, pipeline.spec)[0]

    rows = []
    for index in tqdm(range(args.frames), desc="frames", unit="frame"):
        frame = microscope.render(index)
        prepared = pipeline.prepare(frame)
        outputs = [network.run(inputs) for inputs in pipeline.core_inputs(prepared)]
        before, after = full_frame(outputs, prepared), served(outputs, prepared)
        pd.testing.assert_frame_equal(after, before, check_exact=True)
        rows.append(
            {
                "loops": len(after),
                "prepare": best_seconds(
                    lambda f=frame: pipeline.prepare(f), args.repeats, clock=time.process_time
                ),
                "before": best_seconds(
                    lambda o=outputs, q=prepared: full_frame(o, q), args.repeats, clock=time.process_time
                ),
                "after": best_seconds(
                    lambda o=outputs, q=prepared: served(o, q), args.repeats, clock=time.process_time
                ),
            }
        )
    table = pd.DataFrame(rows)
    ms = table[["prepare", "before", "after"]].mean() * 1e3
    per_frame_s = (ms["prepare"] + ms["after"]) / 1e3
    instances = math.ceil(args.microscopes * args.fps * per_frame_s)
    print(
        f"{args.frames} frames of {args.size}² px, {table.loops.mean():.0f} loops each; "
        f"CPU ms, best of {args.repeats}"
    )
    print(
        "| post-processing before ms | after ms | speed-up | frame preparation ms "
        f"| pipeline instances (CPU cores) for {args.microscopes} x {args.fps:g} fps |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {ms['before']:.0f} | {ms['after']:.1f} | {ms['before'] / ms['after']:.1f}x | {ms['prepare']:.0f} "
        f"| {instances} ({args.microscopes * args.fps:g} frames/s x {per_frame_s * 1e3:.0f} ms) |"
    )


if __name__ == "__main__":
    main()
