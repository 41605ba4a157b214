"""Screenshots of the live web view for the README: a local stack (tritonserver + tracker), two
simulated microscopes streaming with previews, and Debian's headless chromium looking at them.

    .venv/bin/python scripts/webview_screenshots.py --out docs/webview
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver

from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import SimulatorSource
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.v1 import tracker_pb2 as pb

MAX_PNG_BYTES = 200 * 1024


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def save_png(png: bytes, path: Path) -> None:
    """A palette PNG (screenshots are mostly flat colours): well under the README's 200 KB."""
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=48)
    image.save(path, optimize=True)
    if path.stat().st_size > MAX_PNG_BYTES:
        raise RuntimeError(f"{path} is {path.stat().st_size} bytes, more than {MAX_PNG_BYTES}")
    print(f"{path}: {path.stat().st_size // 1024} KB")


def stream(stack: LocalStack, microscope: str, config: SimulationConfig, seed: int, fps: float) -> None:
    endpoints = Endpoints(stack.triton_url, stack.tracker_url, stack.token, preview_every=5)
    spec = pb.SessionSpec(
        model_family=pb.MODEL_FAMILY_SEMANTIC,
        microscope_id=microscope,
        sample="simulated 316L, 2 MeV Ni2+",
        pixel_size_nm=config.pixel_size_nm,
        frame_rate_hz=config.frame_rate_hz,
        dose_rate_ions_cm2_s=config.dose_rate_ions_cm2_s,
    )
    session = MicroscopeSession(endpoints, spec)
    for frame in SimulatorSource(config, seed=seed, fps=fps):
        session.submit(frame)
    session.close()  # the session stays open at the tracker: the pages show it live


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/webview"))
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig(shape=(512, 512), n_frames=args.frames)
    semantic_only = {"model_control": "explicit", "load_models": ("loops_semantic_core", "loops_semantic")}
    with tempfile.TemporaryDirectory() as work, LocalStack(Path(work), **semantic_only) as stack:
        runs = [
            threading.Thread(target=stream, args=(stack, name, config, seed, 3.0))
            for name, seed in (("jannus-saclay-1", 1), ("jannus-saclay-2", 2))
        ]
        for run in runs:
            run.start()
        time.sleep(6)  # a few frames in, while both stream
        driver = browser()
        try:
            driver.get(f"{stack.view_url}/login?token={stack.token}")
            time.sleep(3)
            save_png(driver.get_screenshot_as_png(), args.out / "control_room.png")
            for run in runs:
                run.join()
            session_link = driver.find_element("css selector", "a.microscope").get_attribute("href")
            driver.get(session_link)
            time.sleep(4)
            save_png(driver.get_screenshot_as_png(), args.out / "session.png")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
