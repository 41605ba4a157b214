"""The live web view in a real headless browser (Debian's chromium + chromium-driver, Selenium)
while a simulated run streams through the real tritonserver and tracker of the local stack."""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import grpc
import pytest

from loopstream.client.session import Endpoints, MicroscopeSession
from loopstream.client.sources import SimulatorSource
from loopstream.client.tracker_link import auth_metadata
from loopstream.core.simulator import SimulationConfig
from loopstream.dev.stack import LocalStack
from loopstream.v1 import tracker_pb2 as pb
from loopstream.v1 import tracker_pb2_grpc as pb_grpc
from tests.conftest import session_spec

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra: scripts/test")
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CONFIG = SimulationConfig(shape=(256, 256), n_frames=12)
FIRST, SECOND = 6, 6  # frames streamed before and after the pages are open
PREVIEW_EVERY = 3


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "chromium and chromedriver are not installed: scripts/test installs them (apt-get install "
            "chromium chromium-driver, as root); without root or apt these browser tests cannot run"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stored_frames(stack: LocalStack, session_id: str) -> list[pb.FrameStatistics]:
    with grpc.insecure_channel(stack.tracker_url) as channel:
        return list(
            pb_grpc.TrackerStub(channel)
            .GetStatistics(pb.StatisticsRequest(session_id=session_id), metadata=auth_metadata(stack.token))
            .frames
        )


def submit(session: MicroscopeSession, source: SimulatorSource, indices: range) -> None:
    frames = iter(source)
    for frame in frames:
        if frame.index in indices:
            session.submit(frame)
        if frame.index >= indices.stop - 1:
            break


def test_pages_follow_a_live_run(stack: LocalStack, browser) -> None:
    view = stack.view_url
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{view}/api/sessions", timeout=10)
    assert refused.value.code == 401
    browser.get(view + "/")
    assert "Sign in" in browser.page_source and "control room" not in browser.title

    endpoints = Endpoints(
        stack.triton_url, stack.tracker_url, stack.token, reconnect_timeout_s=30, preview_every=PREVIEW_EVERY
    )
    spec = session_spec(CONFIG, "browser-scope", sample="simulated 316L")
    source = SimulatorSource(CONFIG, seed=5)
    with MicroscopeSession(endpoints, spec) as session:
        sid = session.session.session_id
        submit(session, source, range(FIRST))
        wait_for(
            lambda: len(stored_frames(stack, sid)) == FIRST,
            f"{FIRST} stored frames (failed: {session.report.failed})",
            timeout_s=90,  # the first frames also warm the pipeline up
        )

        browser.get(f"{view}/login?token={stack.token}")  # signs in (cookie), then the control room
        row = wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-session-id="{sid}"]'), "its row"
        )[0]
        assert "browser-scope" in row.text
        wait_for(  # its own row's: sessions of other tests on the shared stack are listed too
            lambda: browser.execute_script(
                "const i = document.querySelector(`tr[data-session-id='${arguments[0]}'] img.thumb`);"
                "return i && i.complete && i.naturalWidth;",
                sid,
            ),
            "the session's thumbnail",
        )

        browser.get(f"{view}/sessions/{sid}")

        def density_points() -> int:
            return browser.execute_script("return window.loopstreamView.plots.density.data[0].length")

        wait_for(lambda: density_points() == FIRST, f"{FIRST} points on the density plot")
        shown = int(
            wait_for(
                lambda: browser.find_element(By.ID, "overlay").get_attribute("data-frame-index"), "a frame"
            )
        )
        assert shown == (FIRST - 1) // PREVIEW_EVERY * PREVIEW_EVERY  # the latest frame with a preview
        stored = {f.frame_index: f.loop_count for f in stored_frames(stack, sid)}
        ellipses = browser.find_elements(By.CSS_SELECTOR, "#ellipses ellipse")
        assert stored[shown] > 0 and len(ellipses) == stored[shown]
        assert browser.execute_script("return document.getElementById('preview').naturalWidth") == 256

        submit(session, source, range(FIRST, FIRST + SECOND))
        wait_for(lambda: density_points() == FIRST + SECOND, "the new frames on the density plot")
    last_shown = (FIRST + SECOND - 1) // PREVIEW_EVERY * PREVIEW_EVERY
    wait_for(
        lambda: browser.find_element(By.ID, "overlay").get_attribute("data-frame-index") == str(last_shown),
        "the newest preview's frame",
    )
    stored = {f.frame_index: f.loop_count for f in stored_frames(stack, sid)}
    assert len(browser.find_elements(By.CSS_SELECTOR, "#ellipses ellipse")) == stored[last_shown]
