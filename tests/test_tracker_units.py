"""Domain pieces of the tracker without the wire: linker restore, store schema, docstring examples."""

from __future__ import annotations

import doctest
import importlib
import sqlite3

import numpy as np
import pandas as pd
import pytest

from loopstream.tracker.linking import SessionLinker
from loopstream.tracker.store import SCHEMA_VERSION, Store, StoreError


@pytest.mark.parametrize("name", ["loopstream.tracker.statistics", "loopstream.tracker.validation"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0


def _frames(n_frames: int = 40, n_loops: int = 30, seed: int = 0) -> list[np.ndarray]:
    """Loops jittering in place, some missing now and then (memory), one frame empty."""
    rng = np.random.default_rng(seed)
    home = rng.uniform(0, 200, (n_loops, 2))
    frames = []
    for i in range(n_frames):
        seen = rng.random(n_loops) > 0.15
        frames.append(np.empty((0, 2)) if i == 17 else home[seen] + rng.normal(0, 0.3, (seen.sum(), 2)))
    return frames


def test_restored_linker_continues_exactly_like_the_uninterrupted_one():
    frames = _frames()
    memory = 3
    reference = SessionLinker(5.0, memory)
    ids = [reference.link(f, t) for t, f in enumerate(frames)]
    for cut in (1, 2, 5, 18, 20, 30):
        recent = pd.concat(
            [
                pd.DataFrame(
                    {
                        "ordinal": t,
                        "track_id": ids[t],
                        "x_link_px": frames[t][:, 0],
                        "y_link_px": frames[t][:, 1],
                    }
                )
                for t in range(max(0, cut - memory - 1), cut)
            ]
        )
        restored = SessionLinker(
            5.0, memory, next_track_id=max(int(np.max(np.concatenate(ids[:cut]))) + 1, 0)
        )
        restored.restore(recent, list(range(max(0, cut - memory - 1), cut)))
        for t in range(cut, len(frames)):
            np.testing.assert_array_equal(
                restored.link(frames[t], t), ids[t], err_msg=f"cut {cut}, frame {t}"
            )


def test_sessions_count_track_ids_independently():
    frames = _frames(10)
    a, b = SessionLinker(5.0, 3), SessionLinker(5.0, 3)
    for t, f in enumerate(frames):
        ids_a = a.link(f, t)
        ids_b = b.link(f, t)
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
