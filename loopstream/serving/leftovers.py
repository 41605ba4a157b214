"""What a killed tritonserver leaves behind, removed before the next one starts in its cache directory.

Triton's Python-backend stubs ignore SIGTERM and outlive a server killed with SIGKILL (each a few
hundred MB), and their shared-memory regions stay in /dev/shm. A cache directory belongs to one
server at a time (a lock file in it, held while the server runs), so whatever still runs from its
backend directory when the next server claims it is stale: the orphaned server and its stubs are
killed, and the /dev/shm regions named with the directory's prefix are removed. Servers with other
cache directories are never touched.

Examples
--------
>>> shm_prefix(Path("/srv/a")) != shm_prefix(Path("/srv/b"))
True
>>> shm_prefix(Path("/srv/a")).startswith("loopstream_")
True
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

LOCK_NAME = "server.lock"
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class Leftovers:
    """What a start removed: process ids killed, /dev/shm region names unlinked."""

    processes: list[int]
    shm_regions: list[str]


def shm_prefix(cache_dir: Path) -> str:
    """The name prefix of the Python backend's /dev/shm regions for servers of ``cache_dir``."""
    digest = hashlib.sha256(str(Path(cache_dir).resolve()).encode()).hexdigest()[:12]
    return f"loopstream_{digest}_"


def claim(cache_dir: Path) -> IO[str]:
    """Lock ``cache_dir`` for one server; the returned file holds the lock until it is closed.

    Not inherited by tritonserver, so the lock goes with its supervisor: a supervisor killed with
    SIGKILL leaves a directory the next one can claim (and clean).
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = open(cache_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "unknown"
        lock.close()
        raise RuntimeError(
            f"cache directory {cache_dir} is in use by a running server (supervisor pid {owner}); "
            "give each server its own --cache-dir"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def remove_leftovers(cache_dir: Path, timeout_s: float = 10.0) -> Leftovers:
    """Kill processes running from ``cache_dir``'s backend directory, unlink its /dev/shm regions.

    Call only while holding :func:`claim`: then nothing of this directory is alive on purpose.
    """
    backends = str(Path(cache_dir).resolve() / "backends")
    stale = [p for p in psutil.process_iter(["cmdline"]) if _runs_from(p.info["cmdline"] or [], backends)]
    for process in stale:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(stale, timeout=timeout_s)
    if alive:
        raise RuntimeError(
            f"stale Triton processes {[p.pid for p in alive]} of {cache_dir} survived SIGKILL "
            f"for {timeout_s:.0f} s; stop them by hand before starting a server there"
        )
    regions = sorted(path.name for path in SHM_DIR.glob(f"{shm_prefix(cache_dir)}*"))
    for name in regions:
        (SHM_DIR / name).unlink(missing_ok=True)
    return Leftovers(sorted(p.pid for p in stale), regions)


def _runs_from(cmdline: list[str], backends: str) -> bool:
    """A stub (its program lies in the backend directory) or a server using that directory."""
    if not cmdline:
        return False
    return cmdline[0].startswith(backends + os.sep) or f"--backend-directory={backends}" in cmdline
