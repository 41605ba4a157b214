"""Seconds per frame of several versions of one pipeline on the same real frame, in-process.

What a new version costs against the one it replaces (a zoom of 1.5 analyses 2.25x the pixels),
before it is rolled out to a pool: each version's whole served code path (``Pipeline.analyse``:
normalisation, resampling, tiling, the version's core network in-process, merging), timed in turns
(version A, version B, A, B, ...) so that load on this shared machine hits both alike; the best
of the repeats is reported, with its ratio to the first version.

    .venv/bin/python bench/bench_pipeline_versions.py --pipeline loops_instance_ti --versions 2 3 \\
        --image ../shared/data/hirst-ti/train/imgs/frame0002.jpg --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
from timing import best_seconds  # this folder is on sys.path when a benchmark runs

from loopstream.models.evaluate import open_pipeline
from loopstream.serving.triton import REPOSITORY


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", default="loops_instance_ti")
    p.add_argument("--versions", nargs="+", default=["2", "3"])
    p.add_argument("--image", type=Path, required=True, help="a greyscale frame (any format OpenCV reads)")
    p.add_argument("--repository", type=Path, default=REPOSITORY)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    frame = cv2.imread(str(args.image), cv2.IMREAD_GRAYSCALE)
    if frame is None:
        p.error(f"cannot read {args.image} as an image")
    opened = {
        v: open_pipeline(args.repository / args.pipeline / v, threads=args.threads) for v in args.versions
    }
    loops = {v: len(pipeline.analyse(frame, core)) for v, (pipeline, core) in opened.items()}  # warm-up
    best = dict.fromkeys(args.versions, float("inf"))
    for _ in range(args.repeats):
        for v, (pipeline, core) in opened.items():
            best[v] = min(best[v], best_seconds(lambda p=pipeline, c=core: p.analyse(frame, c), 1))
    first = best[args.versions[0]]
    height, width = frame.shape
    print(f"{args.pipeline} on {args.image.name} ({height} x {width}), {args.threads} thread(s)")
    print(f"| version | zoom | loops | s per frame (best of {args.repeats}) | x version {args.versions[0]} |")
    print("|---|---|---|---|---|")
    for v, (pipeline, _) in opened.items():
        print(f"| {v} | {pipeline.spec.zoom:g} | {loops[v]} | {best[v]:.2f} | {best[v] / first:.2f} |")


if __name__ == "__main__":
    main()
