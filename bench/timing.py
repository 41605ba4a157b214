"""The benchmarks' one timer: the best of N runs (the machine is shared and noisy).

A benchmark runs as a script, so this folder is on ``sys.path``: ``from timing import best_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def best_seconds(
    fn: Callable[[], object],
    repeats: int,
    *,
    warm_up: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Fastest of ``repeats`` runs of ``fn`` on ``clock`` (wall time; ``time.process_time`` for
    this process's CPU time), after one untimed run when ``warm_up``."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)
