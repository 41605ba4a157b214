"""``loopstream-tracker``: run the tracker service until SIGTERM / SIGINT.

``loopstream-tracker export SESSION --out DIR`` writes a session's export instead.

Every flag can also be set by an environment variable LOOPSTREAM_TRACKER_<FLAG> (upper snake
case, e.g. LOOPSTREAM_TRACKER_PORT; ``--help`` names each); a flag on the command line wins. The
bearer token comes from --token-file or LOOPSTREAM_TRACKER_TOKEN; without one the tracker refuses
to start unless --no-auth says so explicitly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import grpc
from tqdm import tqdm

from loopstream.core.env_flags import EnvFlags
from loopstream.tracker.auth import read_token
from loopstream.tracker.client import TrackerClient
from loopstream.tracker.engine import Defaults
from loopstream.tracker.server import ServerConfig, serve
from loopstream.tracker.store import Store, StoreError

ENV_PREFIX = "LOOPSTREAM_TRACKER_"
STOP_GRACE_S = 3.0
log = logging.getLogger("loopstream.tracker")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and any ``extra`` fields."""

    _standard = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in self._standard})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def parser() -> argparse.ArgumentParser:
    """The service's flags; every default is ServerConfig's or Defaults' (one source for both)."""
    c, d = ServerConfig(), Defaults()
    p = argparse.ArgumentParser(prog="loopstream-tracker", description=__doc__.split("\n")[0])
    flags = EnvFlags(p, ENV_PREFIX)
    flags.add("--host", default=c.host, help="address to bind")
    flags.add("--port", type=int, default=c.port, help="gRPC port; 0 = ephemeral")
    flags.add(
        "--metrics-port", type=int, default=c.metrics_port, help="Prometheus port; 0 = ephemeral, -1 = off"
    )
    flags.add(
        "--view-port",
        type=int,
        default=c.view_port,
        help="live web view (HTTPS when --tls-cert is set), e.g. 8090; 0 = ephemeral, -1 = off",
    )
    flags.add("--view-port-file", help="write the web view's port here")
    flags.add(
        "--viewer-token-file",
        help="file holding a read-only token for the web view (the gRPC API does not accept it)",
    )
    flags.add("--port-file", help="write the bound gRPC port here once serving")
    flags.add("--db", default=str(c.db), help="SQLite store file")
    flags.add(
        "--migrate-only",
        action="store_true",
        help="bring the store to this version's schema, then exit (before an upgrade: a large store "
        "takes ~1 min per GB, longer than a startup probe waits)",
    )
    flags.add(
        "--sync",
        choices=["full", "normal"],
        default=c.synchronous.lower(),
        help="full: fsync every frame before its ack (survives power loss); normal: ~2x faster, survives "
        "tracker crashes only",
    )
    flags.add(
        "--max-message-bytes",
        type=int,
        default=c.max_message_bytes,
        help="largest message a client may send (one frame's detections, ~100 bytes per loop); "
        "clients state the same with loopstream-client --tracker-max-message-bytes",
    )
    flags.add("--token-file", help="file holding the bearer token")
    flags.add("--no-auth", action="store_true", help="serve without authentication")
    flags.add("--tls-cert", help="PEM certificate chain (with --tls-key)")
    flags.add("--tls-key", help="PEM private key (with --tls-cert)")
    flags.add("--default-model", default=d.model_name, help="Triton model for sessions")
    flags.add("--default-model-version", default=d.model_version, help="Triton model version; empty = latest")
    flags.add(
        "--ab-policy",
        help='A/B policy JSON {"pipeline": NAME, "arms": {VERSION: WEIGHT}}, '
        "see loopstream.tracker.rollout; re-read on change; overrides --default-model*",
    )
    flags.add(
        "--search-range-nm",
        type=float,
        default=d.search_range_nm,
        help="default linking search radius (nm) for sessions that do not set one",
    )
    flags.add(
        "--memory-frames",
        type=int,
        default=d.memory_frames,
        help="default number of frames a vanished loop is remembered",
    )
    flags.add(
        "--skip-integrity-check",
        action="store_true",
        default=not c.check_integrity,
        help="start without PRAGMA quick_check of the store (it reads the whole file: ~seconds per GB)",
    )
    flags.add(
        "--max-watchers",
        type=int,
        default=c.max_watchers,
        help="WatchStatistics streams open at once; one more is refused (RESOURCE_EXHAUSTED)",
    )
    flags.add(
        "--max-detection-streams",
        type=int,
        default=c.max_detection_streams,
        help="StreamDetections streams open at once (one per microscope); one more is refused",
    )
    flags.add(
        "--log-level",
        type=str.lower,
        choices=["debug", "info", "warning", "error"],
        default="info",
        help="least severe level logged",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = os.environ.get(ENV_PREFIX + "TOKEN") or None
    if args.token_file:
        token = read_token(args.token_file)
    if args.no_auth:
        token = None
    elif token is None:
        raise ValueError(
            "no bearer token: pass --token-file PATH or set LOOPSTREAM_TRACKER_TOKEN, "
            "or pass --no-auth to serve without authentication"
        )
    return ServerConfig(
        db=args.db,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        token=token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        synchronous=args.sync.upper(),
        max_message_bytes=args.max_message_bytes,
        ab_policy=args.ab_policy,
        check_integrity=not args.skip_integrity_check,
        max_watchers=args.max_watchers,
        max_detection_streams=args.max_detection_streams,
        view_port=args.view_port,
        viewer_token=read_token(args.viewer_token_file) if args.viewer_token_file else None,
        defaults=Defaults(
            args.default_model, args.default_model_version, args.search_range_nm, args.memory_frames
        ),
    )


def _write_port_file(path: str, port: int) -> None:
    """Atomically, so a supervisor polling the file never reads half a number."""
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


def _store_error(e: Exception) -> str:
    if isinstance(e, sqlite3.Error):
        return f"{e}: --db must name a tracker store (SQLite) or a file that does not exist yet"
    return str(e)


def migrate(db: str) -> int:
    """Open (and so migrate) the store, then close it: the exit code says whether it worked."""
    try:
        with Store(db) as store:
            log.info("store ready", extra={"db": db, "schema": store.schema_version()})
    except (sqlite3.Error, StoreError) as e:
        log.error("cannot migrate the store", extra={"db": db, "error": _store_error(e)})
        return 2
    return 0


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loopstream-tracker export",
        description="Write a session's export (CSV and Parquet tables, PNG plots, session.json) to a folder.",
    )
    p.add_argument("session_id", help="the session (loopstream-client prints it; ListSessions lists them)")
    flags = EnvFlags(p, ENV_PREFIX)
    flags.add(
        "--tracker",
        env=ENV_PREFIX + "URL",
        default=f"127.0.0.1:{ServerConfig.port}",
        help="tracker HOST:PORT",
    )
    flags.add("--token-file", help="file holding the bearer token")
    flags.add("--ca", help="PEM CA bundle: use TLS and trust these roots")
    flags.add(
        "--join-fragments",
        action="store_true",
        help="join track fragments offline in the exported tracks (the stored ones stay as they are)",
    )
    p.add_argument("--out", type=Path, default=Path("."), help="folder to write the files into")
    return p


def export_main(argv: list[str]) -> int:
    """``loopstream-tracker export SESSION``: the files stream to disk with a progress bar (bytes)."""
    args = export_parser().parse_args(argv)
    token = read_token(args.token_file) if args.token_file else os.environ.get(ENV_PREFIX + "TOKEN")
    credentials = grpc.ssl_channel_credentials(Path(args.ca).read_bytes()) if args.ca else None
    client = TrackerClient(args.tracker, token, credentials)
    try:
        with tqdm(unit="B", unit_scale=True, desc="export", file=sys.stderr) as bar:

            def progress(name: str, n: int) -> None:
                bar.set_postfix_str(name)
                bar.update(n)

            files = client.export(args.session_id, args.out, progress, args.join_fragments)
    except grpc.RpcError as e:
        print(f"export failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    finally:
        client.close()
    for path in files:
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        return export_main(argv[1:])
    args = parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)
    if args.migrate_only:
        return migrate(args.db)
    try:
        config = config_from_args(args)
        running = serve(config)
    except (ValueError, OSError, RuntimeError) as e:
        log.error("cannot start", extra={"error": str(e)})
        return 2
    except sqlite3.Error as e:
        log.error("cannot start", extra={"error": _store_error(e)})
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set())
    log.info(
        "listening",
        extra={
            "host": config.host,
            "port": running.port,
            "metrics_port": running.metrics_port,
            "view_port": running.view_port,
            "db": str(config.db),
            "auth": config.token is not None,
            "tls": config.tls_cert is not None,
        },
    )
    if args.view_port_file and running.view_port >= 0:
        _write_port_file(args.view_port_file, running.view_port)
    if args.port_file:  # last: a supervisor waiting for it finds the view's port written too
        _write_port_file(args.port_file, running.port)
    while not stop.wait(1.0):
        pass
    started = time.monotonic()
    log.info("stopping", extra={"grace_s": STOP_GRACE_S})
    running.stop(STOP_GRACE_S)
    log.info("stopped", extra={"seconds": round(time.monotonic() - started, 3)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
