"""The README's main-job command works from a fresh clone and leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _processes_mentioning(text: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if text in line and "ps -eo" not in line]


@pytest.mark.slow
@pytest.mark.triton
def test_main_job_from_a_fresh_clone_leaves_no_process_behind(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPSTREAM_")}
    run = subprocess.run(
        ["bash", "scripts/demo", "--frames", "12"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "loops=" in run.stdout, "live statistics were not printed"
    assert "live view: http://127.0.0.1:" in run.stdout, "the address of the live view was not printed"
    report = clone / "out" / "demo" / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert summary["simulated"]["frames_stored"] == 12
    assert summary["samples"]["frames_stored"] == 3
    for name in ("detections.csv", "tracks.csv", "frame_statistics.csv", "density_size_vs_time.png"):
        assert (report / "simulated" / name).stat().st_size > 0

    time.sleep(1.0)
    assert _processes_mentioning(str(clone)) == []

    again = subprocess.run(
        ["bash", "scripts/bootstrap"],  # the default extras, as scripts/demo installs them
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0 and "installing" not in again.stderr, "set-up must be idempotent"
