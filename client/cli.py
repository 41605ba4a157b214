"""``loopstream-client``: stream one microscope's frames through Triton into the tracker.

Every option has an environment variable (LOOPSTREAM_<FLAG>, named in ``--help``), so a facility
can configure the client once per microscope PC.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from loopstream.client.backpressure import BackpressurePolicy
from loopstream.client.session import Endpoints, MicroscopeSession, SessionReport
from loopstream.client.sources import Frame, SimulatorSource, SourceError, open_source
from loopstream.client.tracker_link import DEFAULT_MAX_MESSAGE_BYTES
from loopstream.core.env_flags import EnvFlags
from loopstream.core.simulator import SimulationConfig
from loopstream.v1 import tracker_pb2 as pb

ENV_PREFIX = "LOOPSTREAM_"
FAMILIES = {
    "instance": pb.MODEL_FAMILY_INSTANCE,
    "semantic": pb.MODEL_FAMILY_SEMANTIC,
    "auto": pb.MODEL_FAMILY_UNSPECIFIED,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopstream-client", description=__doc__.splitlines()[0])
    flags = EnvFlags(parser, ENV_PREFIX)
    flags.add("--triton", env="LOOPSTREAM_TRITON_URL", default="127.0.0.1:8001", help="Triton gRPC host:port")
    flags.add("--tracker", env="LOOPSTREAM_TRACKER_URL", default="127.0.0.1:50061", help="tracker host:port")
    flags.add("--token", env="LOOPSTREAM_TRACKER_TOKEN", help="tracker bearer token")
    flags.add("--max-in-flight", type=int, default=8)
    flags.add(
        "--tracker-max-message-bytes",
        type=int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        help="the tracker's --max-message-bytes: a frame whose detections exceed it fails, unsent",
    )
    flags.add(
        "--reconnect-timeout",
        type=float,
        default=120.0,
        help="seconds a restarting Triton or tracker may stay away before the run stops",
    )
    flags.add("--microscope-id", default="microscope-1")
    flags.add("--sample", default="")
    flags.add("--dose-rate", type=float, default=0.0, help="ions/cm^2/s")
    flags.add("--family", env="LOOPSTREAM_MODEL_FAMILY", choices=FAMILIES, default="auto")
    flags.add(
        "--pipeline",
        env="LOOPSTREAM_PIPELINE",
        default="",
        help="Triton pipeline to analyse with instead of the family's ('' = the family's)",
    )
    flags.add(
        "--policy",
        choices=[p.value for p in BackpressurePolicy],
        default="block",
        help="when analysis falls behind: wait, drop the oldest buffered frame, or decimate",
    )
    flags.add("--buffer-frames", type=int, default=16)
    parser.add_argument("--target-fps", type=float, default=None, help="decimate: frames/s to analyse")
    flags.add(
        "--shared-memory",
        action="store_true",
        help="pass frames through system shared memory (only when Triton runs on this host)",
    )
    flags.add(
        "--preview-every",
        type=int,
        default=0,
        help="send a JPEG preview for the tracker's web view with every N-th frame; 0 = none",
    )
    flags.add(
        "--preview-px",
        type=int,
        default=512,
        help="long side of a preview in px (the tracker accepts at most 512)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    sources = parser.add_subparsers(dest="source", required=True)
    sim = sources.add_parser("simulate", help="a simulated in-situ experiment")
    sim.add_argument("--frames", type=int, default=100)
    sim.add_argument("--size", type=int, default=512, help="frame side in px")
    sim.add_argument("--dtype", choices=["uint8", "uint16"], default="uint16")
    sim.add_argument("--fps", type=float, default=0.0, help="replay rate; 0 = as fast as analysed")
    sim.add_argument("--seed", type=int, default=0)
    files = sources.add_parser(
        "files",
        help="a file (PNG, JPEG, TIFF stack, DM3/DM4, EMD, MRC, MP4/AVI), a folder of them, "
        "or a Gatan in-situ tree (Hour_xx/Minute_xx/Second_xx)",
    )
    files.add_argument("path", type=Path)
    files.add_argument("--pixel-size-nm", type=float, default=None, help="default: from the file's metadata")
    files.add_argument("--frame-interval-s", type=float, default=1.0, help="when the files carry no times")
    files.add_argument("--integrate", type=int, default=1, help="average this many consecutive frames")
    files.add_argument("--on-error", choices=["stop", "skip"], default="stop", help="on an unreadable file")
    return parser


def make_source(args: argparse.Namespace) -> tuple[Iterable[Frame], int, float, float]:
    """The frames, their count (for progress), pixel size (nm) and frame rate (Hz)."""
    if args.source == "simulate":
        config = SimulationConfig(shape=(args.size, args.size), dtype=args.dtype, n_frames=args.frames)
        simulated = SimulatorSource(config, args.seed, fps=args.fps)
        return simulated, len(simulated), config.pixel_size_nm, config.frame_rate_hz
    source = open_source(
        args.path, frame_interval_s=args.frame_interval_s, on_error=args.on_error, integrate=args.integrate
    )
    frames = iter(source)
    first = next(frames, None)
    if first is None:
        raise SourceError(f"{args.path} holds no frames")
    pixel_size_nm = args.pixel_size_nm or first.pixel_size_nm
    if not pixel_size_nm:
        raise SourceError(f"{args.path} does not record its pixel size: pass --pixel-size-nm")
    return itertools.chain([first], frames), len(source), pixel_size_nm, 1.0 / args.frame_interval_s


def stream(
    session: MicroscopeSession, frames: Iterable[Frame], total: int | None = None, progress: bool = True
) -> SessionReport:
    """Submit every frame, showing frames/s, loops per frame and frames not yet stored."""
    report = session.report
    with tqdm(total=total, unit="frame", disable=not progress, file=sys.stderr) as bar:
        for frame in frames:
            session.submit(frame)
            bar.update(1)
            bar.set_postfix(
                fps=f"{report.frames_analysed / max(bar.format_dict['elapsed'], 1e-9):.1f}",
                loops=f"{report.loops_per_frame:.1f}",
                lag=session.lag_frames,
                failed=len(report.failed),
                refresh=False,
            )
        return session.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        frames, total, pixel_size_nm, frame_rate_hz = make_source(args)
    except SourceError as exc:
        print(f"loopstream-client: {exc}", file=sys.stderr)
        return 2
    spec = pb.SessionSpec(
        microscope_id=args.microscope_id,
        sample=args.sample,
        pixel_size_nm=pixel_size_nm,
        frame_rate_hz=frame_rate_hz,
        dose_rate_ions_cm2_s=args.dose_rate,
        model_family=FAMILIES[args.family],
        model_name=args.pipeline,
    )
    endpoints = Endpoints(
        args.triton,
        args.tracker,
        args.token,
        args.max_in_flight,
        reconnect_timeout_s=args.reconnect_timeout,
        policy=BackpressurePolicy(args.policy),
        buffer_frames=args.buffer_frames,
        target_fps=args.target_fps,
        shared_memory=args.shared_memory,
        tracker_max_message_bytes=args.tracker_max_message_bytes,
        preview_every=args.preview_every,
        preview_px=args.preview_px,
    )
    try:
        report = stream(MicroscopeSession(endpoints, spec), frames, total, progress=not args.no_progress)
    except (ConnectionError, PermissionError, SourceError) as exc:
        print(f"loopstream-client: {exc}", file=sys.stderr)
        return 1
    for message in report.failed:
        print(f"failed: {message}", file=sys.stderr)
    print(report.summary())
    return 0 if not report.failed else 3


if __name__ == "__main__":
    sys.exit(main())
