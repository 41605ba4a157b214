"""Offline joining of track fragments, for the export: a loop the online linker lost and found
again under a new track id becomes one track again.

Online, a track ends when its loop stays unseen longer than the linker's memory or reappears
beyond the search range (a merged detection shifts its centre). Offline the whole session is known:
a track that ends at frame t and one that starts a few frames later at the same place on the sample
(drift-corrected), with a similar size, are most likely one loop. Pairs are chosen one-to-one at
the least total cost (``scipy.optimize.linear_sum_assignment``), separately within each group of
fragments that compete for one another, so sessions of any length stay cheap. The store is never
rewritten: joining gives a map from stored to joined track ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_NOT_ALLOWED = 1e9  # the cost of a pair outside the limits (finite: the assignment must stay solvable)


@dataclass(frozen=True)
class JoinLimits:
    """How far apart, in arrival order, sample position and size, two fragments of one loop may be."""

    max_gap_frames: int = 12  # frames from the end of one to the start of the next, >= 1
    max_distance_px: float = 3.0  # between their mean drift-corrected positions
    max_size_ratio: float = 1.5  # of the median major axes at the end of one and the start of the next
    min_detections: int = 3  # shorter tracks (mostly false detections) are never joined


def fragment_joins(
    detections: pd.DataFrame, frames: pd.DataFrame, limits: JoinLimits = JoinLimits()
) -> pd.Series:
    """The joined track id of every stored track id (index: stored id), and so how many joins.

    ``detections`` has ``frame_index, track_id, x_corrected_px, y_corrected_px, major_px``;
    ``frames`` maps ``frame_index`` to ``ordinal``. A chain of fragments takes its first one's id.

    >>> detections = pd.DataFrame({
    ...     "frame_index": [0, 1, 2, 6, 7, 8], "track_id": [0, 0, 0, 1, 1, 1],
    ...     "x_corrected_px": [5.0, 5.1, 4.9, 5.2, 5.0, 5.1], "y_corrected_px": 9.0, "major_px": 10.0})
    >>> joined = fragment_joins(detections, pd.DataFrame({"frame_index": range(9), "ordinal": range(9)}))
    >>> joined.to_dict(), int((joined.index != joined.to_numpy()).sum())
    ({0: 0, 1: 0}, 1)
    """
    ordinal = detections.frame_index.map(frames.set_index("frame_index").ordinal)
    d = detections.assign(ordinal=ordinal.to_numpy()).sort_values(["track_id", "ordinal"], kind="stable")
    g = d.groupby("track_id", sort=True)
    tracks = pd.DataFrame(
        {
            "first": g.ordinal.first(),
            "last": g.ordinal.last(),
            "x": g.x_corrected_px.mean(),
            "y": g.y_corrected_px.mean(),
            "start_major": g.head(3).groupby("track_id").major_px.median(),
            "end_major": g.tail(3).groupby("track_id").major_px.median(),
            "n": g.size(),
        }
    )
    joined = pd.Series(tracks.index.to_numpy(), index=tracks.index)
    ends, starts, costs = _candidates(tracks[tracks.n >= limits.min_detections], limits)
    if not len(costs):
        return joined
    successor = {}
    for end_rows, start_rows, cost in _groups(ends, starts, costs):
        for i, j in zip(*linear_sum_assignment(cost), strict=True):
            if cost[i, j] < _NOT_ALLOWED:
                successor[end_rows[i]] = start_rows[j]
    for head in sorted(set(successor) - set(successor.values())):  # chains, from their first fragment
        track = head
        while track in successor:
            track = successor[track]
            joined[track] = head
    return joined


def _candidates(tracks: pd.DataFrame, limits: JoinLimits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (ending track id, starting track id, cost) pair within the limits; cost in [0, 3]."""
    by_start = tracks.sort_values("first")
    start_at = by_start["first"].to_numpy()
    ends, starts, costs = [], [], []
    for track_id, t in tracks.iterrows():
        lo = np.searchsorted(start_at, t["last"] + 1, side="left")
        hi = np.searchsorted(start_at, t["last"] + limits.max_gap_frames, side="right")
        later = by_start.iloc[lo:hi]
        if later.empty:
            continue
        distance = np.hypot(later.x.to_numpy() - t.x, later.y.to_numpy() - t.y) / limits.max_distance_px
        size = np.abs(np.log(later.start_major.to_numpy() / t.end_major)) / np.log(limits.max_size_ratio)
        gap = (later["first"].to_numpy() - t["last"]) / limits.max_gap_frames
        near = (distance <= 1) & (size <= 1)
        ends.extend([track_id] * int(near.sum()))
        starts.extend(later.index[near])
        costs.extend((distance**2 + size**2 + gap)[near])
    return np.array(ends, dtype=np.int64), np.array(starts, dtype=np.int64), np.array(costs, dtype=float)


def _groups(ends: np.ndarray, starts: np.ndarray, costs: np.ndarray):
    """The candidate pairs split into groups that share no fragment, each as (ending ids, starting
    ids, cost matrix with ``_NOT_ALLOWED`` where no pair is allowed)."""
    ids, index = np.unique(np.concatenate([ends, starts]), return_inverse=True)
    end_at, start_at = index[: len(ends)], index[len(ends) :]
    graph = coo_matrix((np.ones(len(ends)), (end_at, start_at)), shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    pair_component = component[end_at]
    for c in np.unique(pair_component):
        pick = pair_component == c
        end_rows, row = np.unique(ends[pick], return_inverse=True)
        start_rows, column = np.unique(starts[pick], return_inverse=True)
        cost = np.full((len(end_rows), len(start_rows)), _NOT_ALLOWED)
        cost[row, column] = costs[pick]
        yield end_rows.tolist(), start_rows.tolist(), cost
