"""Domain pieces of the tracker without the wire: linker restore, store schema, docstring examples."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev import synthetic
from loopstream.tracker.engine import TrackerEngine
from loopstream.tracker.linking import SessionLinker
from loopstream.tracker.store import (
    AB_FRAME_COLUMNS,
    DRIFT_SIGMA_COLUMNS,
    FRAME_COLUMNS,
    HOME_COLUMNS,
    HOME_VARIANCE_COLUMNS,
    MIGRATIONS,
    NEXT_TRACK_COLUMN,
    SCHEMA_VERSION,
    SESSION_COLUMNS,
    STORED_DETECTION_COLUMNS,
    Store,
    StoreError,
)
from loopstream.tracker.validation import FrameInput
from tests.conftest import schema_1_store, stored_ab_frames


def _frames(n_frames: int = 40, n_loops: int = 30, seed: int = 0) -> list[np.ndarray]:
    """Loops jittering in place, some missing now and then (memory), one frame empty: x, y, major."""
    rng = np.random.default_rng(seed)
    home = np.column_stack([rng.uniform(0, 200, (n_loops, 2)), rng.uniform(5, 40, n_loops)])
    frames = []
    for i in range(n_frames):
        seen = rng.random(n_loops) > 0.15
        jitter = rng.normal(0, 0.3, (seen.sum(), 3)) * [1, 1, 3]
        frames.append(np.empty((0, 3)) if i == 17 else home[seen] + jitter)
    return frames


@pytest.mark.parametrize("size_weight", [0.0, 0.5])
def test_restored_linker_continues_exactly_like_the_uninterrupted_one(size_weight):
    memory = 3
    reference = SessionLinker(5.0, memory, size_weight=size_weight)
    frames = [reference.coordinates(f[:, 0], f[:, 1], f[:, 2]) for f in _frames()]
    ids = [reference.link(f, t) for t, f in enumerate(frames)]
    raw = _frames()
    for cut in (1, 2, 5, 18, 20, 30):
        recent = pd.concat(
            [
                pd.DataFrame(
                    {
                        "ordinal": t,
                        "track_id": ids[t],
                        "x_link_px": raw[t][:, 0],
                        "y_link_px": raw[t][:, 1],
                        "major_px": raw[t][:, 2],
                    }
                )
                for t in range(max(0, cut - memory - 1), cut)
            ]
        )
        restored = SessionLinker(
            5.0,
            memory,
            next_track_id=max(int(np.max(np.concatenate(ids[:cut]))) + 1, 0),
            size_weight=size_weight,
        )
        restored.restore(recent, list(range(max(0, cut - memory - 1), cut)))
        for t in range(cut, len(frames)):
            np.testing.assert_array_equal(
                restored.link(frames[t], t), ids[t], err_msg=f"cut {cut}, frame {t}"
            )


def test_a_session_linking_on_size_restarts_exactly_where_it_stopped(tmp_path):
    """The size coordinate is rebuilt from the stored detections: a tracker started on the store
    mid-session links and measures as the uninterrupted one does."""
    mic = SimulatedMicroscope(SimulationConfig(shape=(256, 256), n_frames=40, initial_loops=60), seed=4)
    spec = {"pixel_size_nm": 0.39, "frame_rate_hz": 10.0, "size_weight": 0.3}
    stored = []
    for name, cut in (("uninterrupted", 40), ("restarted", 17)):
        with Store(tmp_path / f"{name}.db") as store:
            engine = TrackerEngine(store)
            sid = engine.open_session(spec)["session_id"]
            assert engine.session(sid)["size_weight"] == 0.3
            _ingest(engine, sid, mic, range(cut))
            _ingest(TrackerEngine(store), sid, mic, range(cut, 40))  # a new tracker on the same store
            stored.append((store.detections(sid), store.frames(sid)))
    (reference, reference_frames), (continued, continued_frames) = stored
    pd.testing.assert_frame_equal(continued, reference)
    pd.testing.assert_frame_equal(
        continued_frames.drop(columns="received_unix_s"), reference_frames.drop(columns="received_unix_s")
    )
    with Store(tmp_path / "positions_only.db") as store:  # the size really is a coordinate
        engine = TrackerEngine(store)
        sid = engine.open_session({**spec, "size_weight": 0.0})["session_id"]
        _ingest(engine, sid, mic, range(40))
        assert not np.array_equal(store.detections(sid).track_id, reference.track_id)


def test_sessions_count_track_ids_independently():
    frames = _frames(10)
    a, b = SessionLinker(5.0, 3), SessionLinker(5.0, 3)
    for t, f in enumerate(frames):
        ids_a = a.link(f[:, :2], t)
        ids_b = b.link(f[:, :2], t)
        np.testing.assert_array_equal(ids_a, ids_b)
    assert ids_a.min() >= 0 and a.next_track_id == b.next_track_id < 60


def test_store_schema_is_versioned(tmp_path):
    path = tmp_path / "t.db"
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
    with Store(path) as store:  # reopening migrates nothing and loses nothing
        assert store.schema_version() == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this tracker"):
        Store(path)


def test_a_schema_1_store_migrates_keeping_its_sessions_and_frames(tmp_path):
    """A store written before A/B rollout: its sessions get no shadow, its frames no latency."""
    path = tmp_path / "v1.db"
    db = schema_1_store(path)
    db.execute(
        "INSERT INTO sessions (session_id, microscope_id, sample, pixel_size_nm, frame_rate_hz, "
        "dose_rate_ions_cm2_s, model_family, model_name, model_version, search_range_nm, memory_frames, "
        "opened_at_unix_s) VALUES ('s1', 'm', '', 1, 10, 0, 0, 'loops_semantic', '1', 8, 3, 0)"
    )
    columns = [c for c in FRAME_COLUMNS if c != "model_name"]
    db.execute(
        f"INSERT INTO frames (sid, {', '.join(columns)}) VALUES (1, {', '.join('0' for _ in columns)})"
    )
    db.close()
    with Store(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 6
        session = store.session("s1")
        assert session["dpa_per_ion_cm2"] == 0.0  # migration 4: no dpa axis for old sessions
        assert (session["model_version"], session["shadow_model_version"], session["shadow_fraction"]) == (
            "1",
            "",
            0.0,
        )
        frames = stored_ab_frames(path, "s1")
        assert frames.frame_index.tolist() == [0] and frames[AB_FRAME_COLUMNS].isna().all(axis=None)
        old = store.frames("s1")  # migration 6: drift uncertainty unknown, no matched loops known
        assert old[DRIFT_SIGMA_COLUMNS[:-1]].isna().all(axis=None) and old.drift_matched_count.tolist() == [0]


def _ingest(engine: TrackerEngine, session_id: str, mic: SimulatedMicroscope, indices: range) -> None:
    for i in indices:
        loops = synthetic.detections(mic, i)
        result = engine.ingest(FrameInput(session_id, i, i / 10.0, "m", "1", 256, 256, loops))
        assert result.accepted, result.error


def _as_schema_2(source, target) -> None:
    """Copy a store into a new file with schema 2 (before homes and next track ids were stored)."""
    db = sqlite3.connect(target, isolation_level=None)
    for migrate in MIGRATIONS[:2]:
        migrate(db)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    db.execute("INSERT INTO schema_version VALUES (2)")
    db.execute("ATTACH ? AS new", (str(source),))
    v2_detections = [c for c in STORED_DETECTION_COLUMNS if c not in HOME_COLUMNS + HOME_VARIANCE_COLUMNS]
    for table, columns in [
        # dpa: migration 5, size weight: migration 6
        ("sessions", ["sid", *(c for c in SESSION_COLUMNS if c not in ("dpa_per_ion_cm2", "size_weight"))]),
        ("frames", ["sid", *FRAME_COLUMNS, *AB_FRAME_COLUMNS]),
        ("detections", ["sid", *v2_detections]),
    ]:
        names = ", ".join(columns)
        db.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM new.{table}")
    db.close()


def test_a_schema_2_store_migrates_and_its_sessions_continue_as_if_uninterrupted(tmp_path):
    """Migration 3 backfills homes and next track ids; a migrated session then links and measures
    drift as the uninterrupted one does (drift to rounding: SQL means vs running means)."""
    config = SimulationConfig(shape=(256, 256), n_frames=60, initial_loops=60, drift_px_per_frame=(0.3, -0.2))
    mic = SimulatedMicroscope(config, seed=5)
    with Store(tmp_path / "uninterrupted.db") as store:
        engine = TrackerEngine(store)
        sid = engine.open_session({"pixel_size_nm": 0.39, "frame_rate_hz": 10.0})["session_id"]
        _ingest(engine, sid, mic, range(40))
        _as_schema_2(tmp_path / "uninterrupted.db", tmp_path / "old.db")
        _ingest(engine, sid, mic, range(40, 60))
        reference_frames = store.last_frames(sid, 60)
        reference = store.detections(sid)

    with Store(tmp_path / "old.db") as store:
        assert store.schema_version() == SCHEMA_VERSION
        backfilled = store.detections(sid)
        expected = reference[reference.frame_index < 40]
        np.testing.assert_array_equal(backfilled.track_detections, expected.track_detections)
        for column in ("home_x_px", "home_y_px"):
            np.testing.assert_allclose(backfilled[column], expected[column], rtol=0, atol=1e-9)
        np.testing.assert_array_equal(
            store.last_frames(sid, 40)[NEXT_TRACK_COLUMN], reference_frames[NEXT_TRACK_COLUMN][:40]
        )
        _ingest(TrackerEngine(store), sid, mic, range(40, 60))  # a tracker started on the migrated store
        continued = store.detections(sid)
        continued_frames = store.last_frames(sid, 60)

    assert reference.track_id.max() >= reference_frames[NEXT_TRACK_COLUMN][39]  # new tracks after the cut
    np.testing.assert_array_equal(continued.track_id, reference.track_id)
    np.testing.assert_array_equal(continued_frames[NEXT_TRACK_COLUMN], reference_frames[NEXT_TRACK_COLUMN])
    for column in ("x_corrected_px", "y_corrected_px", "home_x_px", "home_y_px"):
        np.testing.assert_allclose(continued[column], reference[column], rtol=0, atol=1e-9)


def test_a_frame_with_more_loops_than_one_insert_takes_is_stored_whole(tmp_path):
    rng = np.random.default_rng(0)
    n = 2500  # > the rows of one INSERT statement
    xy = rng.uniform(0, 4096, (n, 2))
    loops = pd.DataFrame(
        {
            "score": 0.9,
            "x_px": xy[:, 0],
            "y_px": xy[:, 1],
            "major_px": 10.0,
            "minor_px": 7.0,
            "angle_deg": 0.0,
            "area_px": 55.0,
            "bbox_x_px": xy[:, 0] - 5,
            "bbox_y_px": xy[:, 1] - 5,
            "bbox_width_px": 10.0,
            "bbox_height_px": 10.0,
        }
    )
    with Store(tmp_path / "big.db") as store:
        engine = TrackerEngine(store)
        sid = engine.open_session({"pixel_size_nm": 0.39, "frame_rate_hz": 10.0})["session_id"]
        assert engine.ingest(FrameInput(sid, 0, 0.0, "m", "1", 4096, 4096, loops)).accepted
        stored = store.detections(sid)
    assert stored.loop_index.tolist() == list(range(n))
    np.testing.assert_array_equal(stored[["x_px", "y_px"]].to_numpy(), xy)
