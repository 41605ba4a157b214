"""The real in-situ video (shen2021-fecral) end to end, side by side with its published analysis.

    nice -n 10 .venv/bin/python bench/bench_real_video.py --family instance      # run, then report
    .venv/bin/python bench/bench_real_video.py --family instance --report-only   # report a stored run

The run streams the video's first 400 JPEG frames through a real tritonserver and tracker (the
local stack, shipped models) as one client session, and checks that every frame was stored exactly
once. The report compares the stored session with the peer system's own output
(``peer_yolo_trackpy_detections.csv``: YOLOv3 trained on this video, then trackpy) and the 5
hand-labelled frames: per-frame counts and their correlation, count error and box AP50 on the
labelled frames, areal density against frame, tracks and their lifetimes. It prints a markdown
table and writes a PNG. The peer publishes no tracks, only detections: its tracks here are
trackpy's ``link_df(search_range=5, memory=3)`` + ``filter_stubs(3)`` of them, as Shen et al. did.

The frames are read where they lie (``../shared/data``) and never copied into the project; the
run's database and figure go under ``out/`` (not committed). Cite Shen et al., Comput. Mater.
Sci. 197 (2021) 110560 with any figure from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from loopstream.client.cli import stream
from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import open_source
from loopstream.stack import LocalStack
from loopstream.tracker.store import Store
from loopstream.v1 import tracker_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LOOPSTREAM_DATA", ROOT.parent / "shared" / "data")) / "shen2021-fecral"
FAMILIES = {"instance": pb.MODEL_FAMILY_INSTANCE, "semantic": pb.MODEL_FAMILY_SEMANTIC}
N_FRAMES = 400
# The source states neither: counts, correlations and AP do not depend on them; densities (per
# um^2) and rates (per s) scale with them. Pass the real values when known.
ASSUMED_PIXEL_SIZE_NM = 1.0
ASSUMED_FRAME_INTERVAL_S = 1.0


def run(args: argparse.Namespace) -> dict:
    """Stream the frames through a fresh local stack; the session's report, as stored in ``out``."""
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / "tracker.db"
    for stale in args.out.glob("tracker.db*"):
        stale.unlink()
    source = open_source(args.frames_dir, frame_interval_s=args.frame_interval_s)
    frames = itertools.islice(source, args.count)
    spec = pb.SessionSpec(
        microscope_id="shen2021-fecral",
        sample="FeCrAl, in-situ ion irradiation (Shen et al. 2021)",
        pixel_size_nm=args.pixel_size_nm,
        frame_rate_hz=1.0 / args.frame_interval_s,
        model_family=FAMILIES[args.family],
    )
    with LocalStack(args.out / "stack", tracker_db=db) as stack:
        session = MicroscopeSession(Endpoints(stack.triton_url, stack.tracker_url, stack.token), spec)
        started = time.perf_counter()
        report = stream(session, frames, total=args.count)
        elapsed = time.perf_counter() - started
    summary = {
        "session_id": report.session_id,
        "model": report.model,
        "frames_submitted": report.frames_submitted,
        "frames_stored": report.frames_stored,
        "failed": len(report.failed),
        "elapsed_s": elapsed,
        "report": report.summary(),
    }
    (args.out / "run.json").write_text(json.dumps(summary, indent=2))
    print(report.summary())
    return summary


def stored_session(out: Path, count: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """The run's summary, its stored frames and detections; fails unless each frame is stored once."""
    summary = json.loads((out / "run.json").read_text())
    store = Store(out / "tracker.db")
    frames = store.frames(summary["session_id"])
    detections = store.detections(summary["session_id"])
    store.close()
    indices = frames.frame_index.to_numpy()
    if len(frames) != count or len(np.unique(indices)) != count or indices.max() != count - 1:
        raise SystemExit(f"stored {len(frames)} frames ({len(np.unique(indices))} distinct), not 0-{count - 1}")
    return summary, frames, detections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, default="instance")
    parser.add_argument("--frames-dir", type=Path, default=DATA / "frames")
    parser.add_argument("--count", type=int, default=N_FRAMES)
    parser.add_argument("--pixel-size-nm", type=float, default=ASSUMED_PIXEL_SIZE_NM)
    parser.add_argument("--frame-interval-s", type=float, default=ASSUMED_FRAME_INTERVAL_S)
    parser.add_argument("--out", type=Path, default=None, help="default: out/shen2021-<family>")
    parser.add_argument("--report-only", action="store_true", help="report the run already in --out")
    args = parser.parse_args()
    args.out = args.out or ROOT / "out" / f"shen2021-{args.family}"
    if not args.report_only:
        run(args)
    summary, frames, detections = stored_session(args.out, args.count)
    print(summary["report"], len(frames), len(detections))


if __name__ == "__main__":
    main()
