"""``loopstream-demo``: the embedded default, end to end on this machine.

Starts a local Triton and a tracker, streams a short simulated in-situ experiment and the bundled
real sample images through them, prints the tracker's live statistics as they are stored, writes
a report (CSV tables and PNG plots per session, and a summary), and stops everything.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
from tqdm import tqdm

from loopstream.client.cli import stream
from loopstream.client.session import Endpoints, MicroscopeSession, SessionReport
from loopstream.client.sources import DirectorySource, SimulatorSource
from loopstream.client.tracker_link import auth_metadata
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.tracker.client import TrackerClient
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"  # loopstream/data/samples
SAMPLE_PIXEL_SIZE_NM = 200.0 / 512  # creme-ds25s: 200 nm field of view on 512 px
PREVIEW_EVERY = 5  # frames between the previews the demo sends to the live view


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopstream-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60, help="frames of the simulated experiment")
    parser.add_argument("--size", type=int, default=512, help="simulated frame side in px")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--samples", type=Path, default=SAMPLES, help="folder of real frames")
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="report folder")
    return parser


def watch_statistics(stack: LocalStack, session_id: str, every: int, stop: threading.Event) -> None:
    """Print one line per ``every`` stored frames, as the tracker stores them."""
    with grpc.insecure_channel(stack.tracker_url) as channel:
        stub = pb_grpc.TrackerStub(channel)
        updates = stub.WatchStatistics(
            pb.WatchRequest(session_id=session_id), metadata=auth_metadata(stack.token)
        )
        stop_watch = threading.Thread(target=lambda: (stop.wait(), updates.cancel()), daemon=True)
        stop_watch.start()
        try:
            for s in updates:
                if s.frame_index % every == 0:
                    tqdm.write(
                        f"  frame {s.frame_index:4d}  t={s.timestamp_s:6.1f} s  loops={s.loop_count:3d}  "
                        f"density={s.density_per_um2:7.1f}/um2  D={s.mean_major_nm:5.1f} nm  "
                        f"Dm={s.mean_minor_nm:5.1f} nm  drift=({s.drift_x_nm:+.1f}, {s.drift_y_nm:+.1f}) nm"
                    )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                tqdm.write(f"  (live statistics stopped: {exc.details()})")


def run_session(stack: LocalStack, spec: pb.SessionSpec, source, every: int) -> SessionReport:
    endpoints = Endpoints(stack.triton_url, stack.tracker_url, stack.token, preview_every=PREVIEW_EVERY)
    session = MicroscopeSession(endpoints, spec)
    stop = threading.Event()
    watcher = threading.Thread(
        target=watch_statistics, args=(stack, session.session.session_id, every, stop), daemon=True
    )
    watcher.start()
    try:
        return stream(session, source, len(source))
    finally:
        stop.set()
        watcher.join(5)


def export(stack: LocalStack, session_id: str, folder: Path) -> list[Path]:
    """Write the tracker's export of a session (CSV tables, PNG plots) into ``folder``."""
    client = TrackerClient(stack.tracker_url, stack.token)
    try:
        return client.export(session_id, folder)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = args.out.resolve()
    config = SimulationConfig(shape=(args.size, args.size), n_frames=args.frames)
    simulated = SimulatorSource(config, seed=args.seed)
    samples = DirectorySource(args.samples, frame_interval_s=1.0)
    summary: dict[str, dict] = {}
    print(f"loopstream demo: local Triton + tracker, report in {out}", flush=True)
    with LocalStack(out / "services") as stack:
        print(f"Triton gRPC {stack.triton_url}, tracker {stack.tracker_url}", flush=True)
        # The link signs the browser in (a cookie) and opens the control room; local, so the token
        # in it goes nowhere else. It works while the demo runs.
        print(f"live view: {stack.view_url}/login?token={stack.token}", flush=True)
        runs: list[tuple[str, pb.SessionSpec, SimulatorSource | DirectorySource, int]] = [
            (
                "simulated",
                pb.SessionSpec(
                    microscope_id="simulated-microscope",
                    sample="simulated 316L",
                    pixel_size_nm=config.pixel_size_nm,
                    frame_rate_hz=config.frame_rate_hz,
                    dose_rate_ions_cm2_s=config.dose_rate_ions_cm2_s,
                    model_family=pb.MODEL_FAMILY_SEMANTIC,
                ),
                simulated,
                10,
            ),
            (
                "samples",
                pb.SessionSpec(
                    microscope_id="creme-ds25s",
                    sample="316L, 2 MeV Ni2+, 550 C",
                    pixel_size_nm=SAMPLE_PIXEL_SIZE_NM,
                    frame_rate_hz=1.0,
                    model_family=pb.MODEL_FAMILY_INSTANCE,  # the better model on real bright field
                ),
                samples,
                1,
            ),
        ]
        for name, spec, source, every in runs:
            print(f"\n[{name}] {len(source)} frames from {spec.microscope_id}", flush=True)
            report = run_session(stack, spec, source, every)
            print(report.summary(), flush=True)
            files = export(stack, report.session_id, out / "report" / name)
            summary[name] = {
                "session_id": report.session_id,
                "model": report.model,
                "frames_submitted": report.frames_submitted,
                "frames_stored": report.frames_stored,
                "failed": report.failed,
                "loops_per_frame": round(report.loops_per_frame, 2),
                "frames_per_s": round(report.frames_per_s, 2),
                "median_latency_s": round(float(np.median(report.latency_s or [np.nan])), 3),
                "files": [str(p.relative_to(out)) for p in files],
            }
        truth = np.mean([len(simulated.microscope.truth(i)) for i in range(args.frames)])
        summary["simulated"]["ground_truth_loops_per_frame"] = round(float(truth), 2)
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nreport written to {out / 'report'}:")
    for entry in summary.values():
        for file in entry["files"]:
            print(f"  {file}")
    print("  report/summary.json")
    failed = sum(len(entry["failed"]) for entry in summary.values())
    return 0 if failed == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
