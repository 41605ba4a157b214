"""The GPU sizing script runs end to end (on the CPU, tiny frames) and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_sizing_writes_figures_for_each_network_and_batch(tmp_path: Path) -> None:
    out = tmp_path / "sizing.json"
    command = [sys.executable, str(ROOT / "bench" / "gpu_sizing.py"), "--device", "cpu", "--dtype", "fp32"]
    command += ["--size", "256", "--batches", "1", "2", "--repeats", "1", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [(r["network"].split(",")[0], r["batch"]) for r in result["networks"]] == [
        ("U-Net", 1),
        ("U-Net", 2),
        ("Mask R-CNN", 1),
        ("Mask R-CNN", 2),
    ]
    assert all(r["frames_per_s"] > 0 and r["latency_s"] > 0 for r in result["networks"]), result["networks"]
    assert result["cpu"]["loops"] > 0 and result["cpu"]["post_s"] > 0
    assert {(t["network"].split(",")[0], t["camera_fps"]) for t in result["sizing"]} == {
        ("U-Net", 30.0),
        ("U-Net", 5.0),
        ("Mask R-CNN", 30.0),
        ("Mask R-CNN", 5.0),
    }
    assert "| microscopes per GPU |" in done.stdout


def test_gpu_sizing_says_when_there_is_no_gpu(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "gpu_sizing.py"),
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "x"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "no CUDA device here; run with --device cpu" in done.stderr
