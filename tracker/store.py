"""Durable store of sessions, frames and detections: SQLite in WAL mode, schema versioned.

A frame is committed in one transaction with its detections and statistics, with
``synchronous=FULL``, so an acknowledged frame survives a crash of the process or the machine.
Writes share one connection behind a lock (SQLite serialises writers anyway); reads use one
connection per thread, so a long query (an export) never holds up the commits of live streams:
in WAL mode readers see the last committed state and do not block the writer.
Everything read back is a plain DataFrame with the column names used by the domain modules.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from loopstream.tracker.drift import EDGE_MARGIN_PX
from loopstream.tracker.validation import LOOP_COLUMNS

log = logging.getLogger("loopstream.tracker")

_V1_DETECTION_COLUMNS = [
    "frame_index",
    "loop_index",
    "track_id",
    *LOOP_COLUMNS,
    "x_corrected_px",
    "y_corrected_px",
]
# Migration 3: each detection's track *home* after it (drift.py): the track's detections so far and
# the mean of their drift-corrected positions (px), the loop's position on the sample. A restarted
# tracker rebuilds the drift state from each live track's latest detection.
HOME_COLUMNS = ["track_detections", "home_x_px", "home_y_px"]
# Migration 6: the variance (px²) each home inherited from the drift estimates that corrected its
# detections (drift.py), so a restarted tracker goes on reporting the same drift uncertainty.
HOME_VARIANCE_COLUMNS = ["home_variance_x_px2", "home_variance_y_px2"]
STORED_DETECTION_COLUMNS = [*_V1_DETECTION_COLUMNS, *HOME_COLUMNS, *HOME_VARIANCE_COLUMNS]

FRAME_COLUMNS = [
    "frame_index",
    "ordinal",  # 0, 1, 2, ... in arrival order: the linker's notion of time
    "timestamp_s",
    "width_px",
    "height_px",
    "model_name",
    "model_version",
    "loop_count",
    "linked_count",
    "density_per_um2",
    "mean_major_nm",
    "mean_minor_nm",
    "foreground_percent",
    "fluence_ions_cm2",
    "drift_x_px",
    "drift_y_px",
    "drift_x_nm",
    "drift_y_nm",
    "received_unix_s",
]

# Migration 6: each frame's drift uncertainty (one sigma per axis, px and nm; NaN/NULL where no loop
# matched) and how many matched loops the drift was averaged over.
DRIFT_SIGMA_COLUMNS = [
    "drift_sigma_x_px",
    "drift_sigma_y_px",
    "drift_sigma_x_nm",
    "drift_sigma_y_nm",
    "drift_matched_count",
]

# Migration 3: the first track id the session has not used yet, after the frame (restarts go on
# counting from it).
NEXT_TRACK_COLUMN = "next_track_id"

# Migration 2 (A/B rollout): the client-measured inference latency and, for a shadowed frame, how
# the candidate version's detections agreed with the session's. NULL when unknown or not shadowed.
AB_FRAME_COLUMNS = [
    "latency_s",
    "shadow_model_version",
    "shadow_candidate_loop_count",
    "shadow_matched",
    "shadow_f1",
    "shadow_latency_s",
]

SESSION_COLUMNS = [
    "session_id",
    "microscope_id",
    "sample",
    "pixel_size_nm",
    "frame_rate_hz",
    "dose_rate_ions_cm2_s",
    "model_family",
    "model_name",
    "model_version",
    "search_range_nm",
    "memory_frames",
    "opened_at_unix_s",
    "closed",
    "shadow_model_version",  # migration 2: the candidate the session shadows, "" = none
    "shadow_fraction",
    "dpa_per_ion_cm2",  # migration 5: dose in dpa per unit fluence (from SRIM), 0 = unknown
    "size_weight",  # migration 6: loop size as a linking coordinate (linking.py), 0 = off
]


def _migration_1(db: sqlite3.Connection) -> None:
    """The first schema: sessions, frames (with their statistics), detections (with track ids)."""
    db.execute(
        """CREATE TABLE sessions (
            sid INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL UNIQUE,
            microscope_id TEXT NOT NULL, sample TEXT NOT NULL,
            pixel_size_nm REAL NOT NULL, frame_rate_hz REAL NOT NULL,
            dose_rate_ions_cm2_s REAL NOT NULL, model_family INTEGER NOT NULL,
            model_name TEXT NOT NULL, model_version TEXT NOT NULL,
            search_range_nm REAL NOT NULL, memory_frames INTEGER NOT NULL,
            opened_at_unix_s REAL NOT NULL, closed INTEGER NOT NULL DEFAULT 0)"""
    )
    db.execute(
        f"""CREATE TABLE frames (
            sid INTEGER NOT NULL REFERENCES sessions(sid),
            {", ".join(f"{c} {'TEXT' if c.startswith('model_') else 'REAL'}" for c in _V1_FRAME_COLUMNS)},
            PRIMARY KEY (sid, frame_index)) WITHOUT ROWID"""
    )
    db.execute(
        f"""CREATE TABLE detections (
            sid INTEGER NOT NULL,
            {", ".join(f"{c} REAL" for c in _V1_DETECTION_COLUMNS)},
            PRIMARY KEY (sid, frame_index, loop_index)) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX detections_by_track ON detections (sid, track_id)")
    db.execute("CREATE UNIQUE INDEX frames_by_ordinal ON frames (sid, ordinal)")


_V1_FRAME_COLUMNS = FRAME_COLUMNS[:]  # frozen: migration 1 must create the same table forever


def _migration_2(db: sqlite3.Connection) -> None:
    """A/B rollout: each session's shadow assignment; each frame's latency and shadow agreement."""
    db.execute("ALTER TABLE sessions ADD COLUMN shadow_model_version TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE sessions ADD COLUMN shadow_fraction REAL NOT NULL DEFAULT 0")
    for column in AB_FRAME_COLUMNS:
        kind = "TEXT" if column.endswith("_version") else "REAL"
        db.execute(f"ALTER TABLE frames ADD COLUMN {column} {kind}")
    db.execute("CREATE INDEX sessions_by_arm ON sessions (model_name, model_version, opened_at_unix_s)")


def _migration_3(db: sqlite3.Connection) -> None:
    """Restarts without the track index: homes per detection, the next track id per frame.

    The index on (session, track) cost a scattered B-tree insert per detection (a quarter of the
    ingest time at 200 loops/frame) and served only restarts. Stored sessions are backfilled as
    ``drift.DriftEstimator`` keeps homes (SQL means of the detections wholly inside their frame,
    equal to the online running means to rounding; a track seen only at the edge so far keeps its
    first corrected position, with count 0).
    """
    for column in HOME_COLUMNS:
        db.execute(f"ALTER TABLE detections ADD COLUMN {column} REAL")
    db.execute(f"ALTER TABLE frames ADD COLUMN {NEXT_TRACK_COLUMN} INTEGER")
    db.execute(
        """WITH marked AS (
            SELECT d.sid, d.frame_index, d.loop_index, d.track_id, d.x_corrected_px, d.y_corrected_px,
                d.x_px >= d.major_px / 2 + :margin AND d.y_px >= d.major_px / 2 + :margin
                AND d.x_px <= f.width_px - (d.major_px / 2 + :margin)
                AND d.y_px <= f.height_px - (d.major_px / 2 + :margin) AS inside
            FROM detections d JOIN frames f ON f.sid = d.sid AND f.frame_index = d.frame_index),
        homes AS (
            SELECT sid, frame_index, loop_index, COUNT(*) FILTER (WHERE inside) OVER track AS n,
                COALESCE(AVG(x_corrected_px) FILTER (WHERE inside) OVER track,
                    FIRST_VALUE(x_corrected_px) OVER track) AS x,
                COALESCE(AVG(y_corrected_px) FILTER (WHERE inside) OVER track,
                    FIRST_VALUE(y_corrected_px) OVER track) AS y
            FROM marked
            WINDOW track AS (PARTITION BY sid, track_id ORDER BY frame_index ROWS UNBOUNDED PRECEDING))
        UPDATE detections SET track_detections = homes.n, home_x_px = homes.x, home_y_px = homes.y
        FROM homes WHERE detections.sid = homes.sid AND detections.frame_index = homes.frame_index
            AND detections.loop_index = homes.loop_index""",
        {"margin": EDGE_MARGIN_PX},
    )
    db.execute(
        f"""WITH tops AS (
            SELECT f.sid, f.frame_index,
                COALESCE(MAX(d.top) OVER (PARTITION BY f.sid ORDER BY f.frame_index), -1) + 1 AS next
            FROM frames f LEFT JOIN (
                SELECT sid, frame_index, MAX(track_id) AS top FROM detections GROUP BY sid, frame_index
            ) d ON d.sid = f.sid AND d.frame_index = f.frame_index)
        UPDATE frames SET {NEXT_TRACK_COLUMN} = tops.next
        FROM tops WHERE frames.sid = tops.sid AND frames.frame_index = tops.frame_index"""
    )
    db.execute("DROP INDEX detections_by_track")


# Migration 4: the hash of what each frame stores (validation.content_hash), so a resend with other
# content is told apart from a duplicate; NULL for frames stored before.
CONTENT_HASH_COLUMN = "content_sha256"
_INTEGER_COLUMNS = {
    "sid",
    "frame_index",
    "ordinal",
    "width_px",
    "height_px",
    "loop_count",
    "linked_count",
    "shadow_candidate_loop_count",
    "shadow_matched",
    NEXT_TRACK_COLUMN,
    "loop_index",
    "track_id",
    "track_detections",
    "drift_matched_count",
}
_V4_FRAME_COLUMNS = [*_V1_FRAME_COLUMNS, *AB_FRAME_COLUMNS, NEXT_TRACK_COLUMN]  # frozen, as _V1_*
_V4_DETECTION_COLUMNS = [*_V1_DETECTION_COLUMNS, *HOME_COLUMNS]  # frozen


def _sql_type(column: str) -> str:
    if column in _INTEGER_COLUMNS:
        return "INTEGER"
    return "TEXT" if column.endswith(("_name", "_version")) else "REAL"


def _migration_4(db: sqlite3.Connection) -> None:
    """Integers as INTEGER (they were REAL: 2^53 + 1 read back as 2^53) and the frames' content hash.

    SQLite cannot change a column's type in place: both tables are copied (~1 min per GB, once);
    REAL values that are whole numbers become INTEGER on the way (column affinity).
    """
    frames = ", ".join(f"{c} {_sql_type(c)}" for c in _V4_FRAME_COLUMNS)
    db.execute(
        f"""CREATE TABLE frames_v4 (
            sid INTEGER NOT NULL REFERENCES sessions(sid), {frames}, {CONTENT_HASH_COLUMN} BLOB,
            PRIMARY KEY (sid, frame_index)) WITHOUT ROWID"""
    )
    detections = ", ".join(f"{c} {_sql_type(c)}" for c in _V4_DETECTION_COLUMNS)
    db.execute(
        f"""CREATE TABLE detections_v4 (sid INTEGER NOT NULL, {detections},
            PRIMARY KEY (sid, frame_index, loop_index)) WITHOUT ROWID"""
    )
    for table, columns in (("frames", _V4_FRAME_COLUMNS), ("detections", _V4_DETECTION_COLUMNS)):
        names = ", ".join(["sid", *columns])
        db.execute(f"INSERT INTO {table}_v4 ({names}) SELECT {names} FROM {table}")
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {table}_v4 RENAME TO {table}")
    db.execute("CREATE UNIQUE INDEX frames_by_ordinal ON frames (sid, ordinal)")


def _migration_5(db: sqlite3.Connection) -> None:
    """The dpa axis: each session's displacement damage per unit fluence (0 = not given)."""
    db.execute("ALTER TABLE sessions ADD COLUMN dpa_per_ion_cm2 REAL NOT NULL DEFAULT 0")


def _migration_6(db: sqlite3.Connection) -> None:
    """Drift with its uncertainty: per frame its sigma and matched loops, per detection its home's
    inherited variance (NULL for what was stored before: unknown); per session the size weight of
    linking (0 = off, as every session linked before)."""
    db.execute("ALTER TABLE sessions ADD COLUMN size_weight REAL NOT NULL DEFAULT 0")
    for column in DRIFT_SIGMA_COLUMNS:
        db.execute(f"ALTER TABLE frames ADD COLUMN {column} {_sql_type(column)}")
    for column in HOME_VARIANCE_COLUMNS:
        db.execute(f"ALTER TABLE detections ADD COLUMN {column} REAL")


# Index i migrates schema version i to i + 1. Append, never edit: stores in the field depend on it.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
]
SCHEMA_VERSION = len(MIGRATIONS)
_SID = "(SELECT sid FROM sessions WHERE session_id = ?)"  # a session's integer key, from its uuid


_STORED_FRAME_COLUMNS = [
    "sid",
    *FRAME_COLUMNS,
    *AB_FRAME_COLUMNS,
    NEXT_TRACK_COLUMN,
    CONTENT_HASH_COLUMN,
    *DRIFT_SIGMA_COLUMNS,
]
_INSERT_FRAME_SQL = (
    f"INSERT OR IGNORE INTO frames ({', '.join(_STORED_FRAME_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _STORED_FRAME_COLUMNS)})"
)
# Detections go in as multi-row INSERTs: one statement per frame releases the GIL once while SQLite
# works, where one statement per row made concurrent streams queue for the GIL 200 times per commit.
_ROWS_PER_INSERT = 1000  # x 24 parameters, under SQLite's limit of 32,766


@functools.lru_cache(maxsize=64)
def _insert_detections_sql(n_rows: int) -> str:
    row = f"({', '.join('?' for _ in range(len(STORED_DETECTION_COLUMNS) + 1))})"
    columns = ", ".join(STORED_DETECTION_COLUMNS)
    return f"INSERT INTO detections (sid, {columns}) VALUES {', '.join([row] * n_rows)}"


class StoreError(RuntimeError):
    """The store cannot be used (e.g. written by a newer tracker, or damaged)."""


STORE_ERROR_KINDS = ("full", "io", "corrupt", "busy", "other")
READER_CACHE_KIB = 256  # SQLite's default is 2 MiB per connection
MIN_FREE_BYTES = 1 << 20  # free space the volume needs before a store that failed a write is ready again


def store_error_kind(error: sqlite3.Error) -> str:
    """Which of ``STORE_ERROR_KINDS`` an SQLite error is (from its extended result code's name)."""
    name = getattr(error, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "full"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return "corrupt"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN", "SQLITE_READONLY")):
        return "io"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "busy"
    return "other"


def store_error_sentence(error: sqlite3.Error) -> str:
    """What a client is told about a failed store operation: the real cause and what to do."""
    advice = {
        "full": "the tracker's volume has no space left: nothing was stored; the operator must free "
        "or grow it, then resend",
        "io": "the tracker cannot read or write its store file (I/O error): nothing was stored; the "
        "operator must check the volume, then resend",
        "corrupt": "the tracker's store file is damaged: the operator must restore it from a backup "
        "(sqlite3 .recover saves what is readable)",
        "busy": "the store is locked by another process: retry in a few seconds",
        "other": "nothing was stored; retry later, and report it if it persists",
    }[store_error_kind(error)]
    return f"store error ({error}): {advice}"


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is still open: after SQLITE_FULL or an I/O error SQLite has already rolled the
    transaction back, and a second ROLLBACK would replace the real cause by "no transaction is active"."""
    if db.in_transaction:
        db.execute("ROLLBACK")


@dataclass(frozen=True)
class SessionProgress:
    frames_stored: int
    last_frame_index: int  # -1 before the first frame


class Store:
    """All persistent state of a tracker."""

    def __init__(self, path: str | Path, synchronous: str = "FULL", check_integrity: bool = True) -> None:
        """``synchronous``: FULL (fsync every commit: survives power loss) or NORMAL (WAL: survives
        a crash of the process, not of the machine; about twice the frames/s).
        ``check_integrity``: run ``PRAGMA quick_check`` first (reads the whole file: ~seconds per GB)
        and refuse a damaged store rather than serve errors from it later."""
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous = {synchronous!r}: use FULL or NORMAL")
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self.write_error: str | None = None  # the last failed write's cause, until a write succeeds
        try:
            if check_integrity:
                self._check_integrity()
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _check_integrity(self) -> None:
        try:
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as e:
            if store_error_kind(e) != "corrupt" or "not a database" in str(e):
                raise  # not a store at all: the caller says so
            problems = [str(e)]
        if problems != ["ok"]:
            raise StoreError(
                f"{self.path} is damaged (SQLite quick_check: {'; '.join(problems)}): restore it from a "
                f"backup or recover what is readable with `sqlite3 {self.path} .recover`; "
                "--skip-integrity-check starts on it anyway (reads of damaged pages will fail)"
            )

    def _migrate(self) -> None:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                row = db.execute("SELECT version FROM schema_version").fetchone()
                version = 0 if row is None else int(row[0])
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has schema version {version}, newer than this tracker's "
                        f"{SCHEMA_VERSION}: upgrade the tracker or use another --db file"
                    )
                if version and version < SCHEMA_VERSION:  # rewrites tables: ~1 min per GB, once
                    log.info(
                        "migrating the store",
                        extra={"db": self.path, "from_schema": version, "to_schema": SCHEMA_VERSION},
                    )
                started = time.monotonic()
                for migrate in MIGRATIONS[version:]:
                    migrate(db)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            if version and version < SCHEMA_VERSION:
                log.info(
                    "store migrated", extra={"db": self.path, "seconds": round(time.monotonic() - started, 1)}
                )

    def close(self) -> None:
        """Close after any commit in flight (it holds the lock) has finished."""
        with self._lock:
            self._db.close()
            for reader in self._readers:
                reader.close()

    def _reader(self) -> sqlite3.Connection:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # One reader per server thread (hundreds with open watchers): a small page cache each
            # bounds their memory (READER_CACHE_KIB x threads); the OS caches the file anyway.
            reader.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
            self._local.reader = reader
            with self._lock:
                self._readers.append(reader)
        return reader

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._reader().execute(sql, args).fetchall()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def schema_version(self) -> int:
        return int(self._read("SELECT version FROM schema_version")[0][0])

    # -- sessions ---------------------------------------------------------------------------

    def add_session(self, session: dict) -> None:
        cols = ", ".join(SESSION_COLUMNS)
        marks = ", ".join("?" for _ in SESSION_COLUMNS)
        with self._lock:
            self._db.execute(
                f"INSERT INTO sessions ({cols}) VALUES ({marks})", [session[c] for c in SESSION_COLUMNS]
            )

    def close_session(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE sessions SET closed = 1 WHERE session_id = ?", (session_id,))

    def sessions(self, include_closed: bool = True) -> pd.DataFrame:
        where = "" if include_closed else "WHERE closed = 0"
        return self._query(f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions {where} ORDER BY sid", ())

    def session(self, session_id: str) -> dict | None:
        """The session's row as plain Python values, or None."""
        rows = self._read(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE session_id = ?", (session_id,)
        )
        return dict(zip(SESSION_COLUMNS, rows[0], strict=True)) if rows else None

    def progress(self, session_id: str) -> SessionProgress:
        ((n, last),) = self._read(
            f"SELECT COUNT(*), MAX(frame_index) FROM frames WHERE sid = {_SID}",
            (session_id,),
        )
        return SessionProgress(int(n), -1 if last is None else int(last))

    def last_frame_index(self, session_id: str) -> int:
        """-1 before the first frame; cheap (primary-key lookup), for pollers."""
        ((last,),) = self._read(f"SELECT MAX(frame_index) FROM frames WHERE sid = {_SID}", (session_id,))
        return -1 if last is None else int(last)

    # -- frames -----------------------------------------------------------------------------

    def frame_hash(self, session_id: str, frame_index: int) -> bytes | None:
        """The stored frame's content hash, b"" when stored before hashes were kept, None when not stored."""
        rows = self._read(
            f"SELECT {CONTENT_HASH_COLUMN} FROM frames WHERE sid = {_SID} AND frame_index = ?",
            (session_id, frame_index),
        )
        return (rows[0][0] or b"") if rows else None

    def commit_frame(self, session_id: str, frame: dict, detections: np.ndarray) -> bool:
        """Store one frame and its detections (rows of ``STORED_DETECTION_COLUMNS``) atomically.

        ``AB_FRAME_COLUMNS`` missing from ``frame`` are stored as NULL.
        Returns False, storing nothing, if the frame was already stored.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                (sid,) = db.execute("SELECT sid FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
                cur = db.execute(
                    _INSERT_FRAME_SQL,
                    [
                        sid,
                        *(frame[c] for c in FRAME_COLUMNS),
                        *(frame.get(c) for c in AB_FRAME_COLUMNS),
                        frame[NEXT_TRACK_COLUMN],
                        frame.get(CONTENT_HASH_COLUMN),
                        *(frame[c] for c in DRIFT_SIGMA_COLUMNS),
                    ],
                )
                if cur.rowcount == 0:
                    _rollback(db)
                    return False
                # A session the tracker left on "latest" runs on the version its client pinned at
                # open; the first frame says which, and the session records it from then on.
                db.execute(
                    "UPDATE sessions SET model_version = ? WHERE sid = ? AND model_version = ''",
                    (frame["model_version"], sid),
                )
                rows = np.column_stack([np.full(len(detections), sid), detections])
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = rows[start : start + _ROWS_PER_INSERT]
                    db.execute(_insert_detections_sql(len(chunk)), chunk.ravel().tolist())
                db.execute("COMMIT")
            except sqlite3.OperationalError as e:  # disk full, I/O error: readiness fails until a write works
                _rollback(db)
                self.write_error = str(e)
                raise
            except BaseException:
                _rollback(db)
                raise
            self.write_error = None
        return True

    def probe_write(self) -> bool:
        """Whether the store can write again after a failed write (clears ``write_error`` when so).

        A small commit alone would not say it: a failed transaction may leave the WAL file longer
        than what it holds, and a probe fits in that tail while the disk is still full. So the
        volume must also have ``MIN_FREE_BYTES`` free.
        """
        with self._lock:
            try:
                stats = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
                if stats.f_bavail * stats.f_frsize < MIN_FREE_BYTES:
                    return False
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE schema_version SET version = version")
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as e:
                if isinstance(e, sqlite3.Error):
                    _rollback(self._db)
                self.write_error = str(e)
                return False
            self.write_error = None
            return True

    def frames(self, session_id: str, from_frame: int = 0, to_frame: int | None = None) -> pd.DataFrame:
        """Stored frames with their statistics, by frame index (``to_frame`` inclusive)."""
        upper = "" if to_frame is None else "AND frame_index <= ?"
        args = (session_id, from_frame) if to_frame is None else (session_id, from_frame, to_frame)
        df = self._query(
            f"SELECT {', '.join([*FRAME_COLUMNS, *DRIFT_SIGMA_COLUMNS])} FROM frames WHERE sid = "
            f"{_SID} AND frame_index >= ? {upper} "
            "ORDER BY frame_index",
            args,
        )
        return _frame_types(df)

    def last_frames(self, session_id: str, n: int) -> pd.DataFrame:
        """The ``n`` most recent frames, oldest first, with their ``NEXT_TRACK_COLUMN``."""
        df = self._query(
            f"SELECT {', '.join([*FRAME_COLUMNS, *DRIFT_SIGMA_COLUMNS, NEXT_TRACK_COLUMN])} FROM frames "
            f"WHERE sid = {_SID} "
            "ORDER BY ordinal DESC LIMIT ?",
            (session_id, n),
        )
        return _frame_types(df.iloc[::-1].reset_index(drop=True)).astype({NEXT_TRACK_COLUMN: "int64"})

    def detections(
        self,
        session_id: str,
        from_frame: int = 0,
        to_frame: int | None = None,
    ) -> pd.DataFrame:
        """Stored detections ordered by (frame_index, loop_index)."""
        clauses, args = ["frame_index >= ?"], [session_id, from_frame]
        if to_frame is not None:
            clauses.append("frame_index <= ?")
            args.append(to_frame)
        df = self._query(
            f"SELECT {', '.join(STORED_DETECTION_COLUMNS)} FROM detections WHERE sid = "
            f"{_SID} AND {' AND '.join(clauses)} "
            "ORDER BY frame_index, loop_index",
            tuple(args),
        )
        for c in ("frame_index", "loop_index", "track_id", "track_detections"):
            df[c] = df[c].astype("int64")
        df[HOME_VARIANCE_COLUMNS] = df[HOME_VARIANCE_COLUMNS].astype(
            float
        )  # NULL (before migration 6) as NaN
        return df

    def arm_frames(self, pipeline: str = "", since_unix_s: float = 0.0) -> pd.DataFrame:
        """Sessions opened since ``since_unix_s`` (of ``pipeline``, "" = any) with their frames.

        One row per frame (sid, arm, loop_count, mean_major_nm, latency and shadow columns); a
        session without frames yet has one row with NULL frame columns, so it still counts.
        """
        where = ["s.opened_at_unix_s >= ?"]
        args: list[float | str] = [since_unix_s]
        if pipeline:
            where.append("s.model_name = ?")
            args.append(pipeline)
        return self._query(
            "SELECT s.sid, s.model_version AS arm, f.frame_index, f.loop_count, f.mean_major_nm, "
            f"{', '.join(f'f.{c}' for c in AB_FRAME_COLUMNS)} "
            f"FROM sessions s LEFT JOIN frames f ON f.sid = s.sid WHERE {' AND '.join(where)}",
            tuple(args),
        )

    def _query(self, sql: str, args: tuple) -> pd.DataFrame:
        cur = self._reader().execute(sql, args)
        return pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])


def _frame_types(df: pd.DataFrame) -> pd.DataFrame:
    df[DRIFT_SIGMA_COLUMNS] = df[DRIFT_SIGMA_COLUMNS].astype(float)  # NULL (unknown) as NaN
    df["drift_matched_count"] = df["drift_matched_count"].fillna(0)  # NULL before migration 6
    for c in (
        "frame_index",
        "ordinal",
        "width_px",
        "height_px",
        "loop_count",
        "linked_count",
        "drift_matched_count",
    ):
        df[c] = df[c].astype("int64")
    for c in ("model_name", "model_version"):
        df[c] = df[c].astype(object)
    return df
