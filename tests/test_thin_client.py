"""The client installs thin: a fresh venv holding only ``loopstream[client]`` streams frames.

The venv is made from scratch and the project installed into it with its ``client`` extra and
every dependency that extra names (nothing copied from the test venv), so a dependency the client
needs but the extra lacks fails here. The client then streams a small TIFF stack into a real
tritonserver and tracker (the ``stack`` fixture, run from the test venv) and the tracker stores
every frame. README, "Installing", gives the duration.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from loopstream.core.simulator import SimulatedMicroscope, SimulationConfig
from loopstream.dev.stack import LocalStack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# What a microscope PC must not get: the tracker's, the models' and the operator tools' packages.
NOT_IN_CLIENT = ("trackpy", "torch", "matplotlib", "pyarrow", "kubernetes", "scipy", "onnxruntime")
INSTALL_TIMEOUT_S = 900


def _clean_env() -> dict[str, str]:
    """The environment without the test venv's, so the thin venv sees only what it installed."""
    return {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("client-venv")
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=120)
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{ROOT}[client]"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, f"pip install {ROOT}[client] failed:\n{done.stderr[-4000:]}"
    return venv


def test_the_client_venv_holds_no_tracker_model_or_operator_package(client_venv: Path) -> None:
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))"
    )
    names = [*NOT_IN_CLIENT, "loopstream.client.cli"]
    done = subprocess.run(
        [str(client_venv / "bin" / "python"), "-c", probe, *names],
        env=_clean_env(),
        cwd=client_venv,  # not the repository root, whose loopstream/ folder would shadow the install
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = json.loads(done.stdout)
    assert found.pop("loopstream.client.cli"), "the client itself is not importable in its venv"
    assert not any(found.values()), f"the client extra pulls in {[m for m, f in found.items() if f]}"


def test_the_client_command_starts_in_its_venv(client_venv: Path) -> None:
    done = subprocess.run(
        [str(client_venv / "bin" / "loopstream-client"), "--help"],
        env=_clean_env(),
        cwd=client_venv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "simulate" in done.stdout and "files" in done.stdout


def test_the_thin_client_streams_a_tiff_stack_into_a_real_stack(
    client_venv: Path, stack: LocalStack, tmp_path: Path
) -> None:
    config = SimulationConfig(shape=(256, 256), n_frames=3)
    microscope = SimulatedMicroscope(config, seed=13)
    stack_file = tmp_path / "run.tif"
    frames = [microscope.render(i) for i in range(config.n_frames)]
    tifffile.imwrite(stack_file, np.stack(frames), photometric="minisblack")
    argv = [
        str(client_venv / "bin" / "loopstream-client"),
        f"--triton={stack.triton_url}",
        f"--tracker={stack.tracker_url}",
        f"--microscope-id=thin-client-{os.getpid()}",
        "--reconnect-timeout=30",
        "--no-progress",
        "files",
        str(stack_file),
        f"--pixel-size-nm={config.pixel_size_nm}",
    ]
    env = dict(_clean_env(), LOOPSTREAM_TRACKER_TOKEN=stack.token)
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"loopstream-client exited {done.returncode}:\n{done.stderr[-4000:]}"
    summary = re.search(r"session (\S+) .*: 3 frames submitted, 3 analysed, 3 stored, 0 failed", done.stdout)
    assert summary, done.stdout
    with sqlite3.connect(stack.workdir / "tracker.db") as db:
        stored = db.execute(
            "SELECT COUNT(DISTINCT frame_index) FROM frames JOIN sessions USING (sid) WHERE session_id = ?",
            (summary.group(1),),
        ).fetchone()
    assert stored == (3,), "the tracker must hold the three frames the thin client sent"
