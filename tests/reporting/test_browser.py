"""The report page in a real headless Chromium, driven over the Chrome DevTools Protocol: it loads
with no console errors, requests nothing but itself, and draws every plot; a screenshot of the
whole page is written next to it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from workers.reporting.page import render_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (chromium or chromium-browser): the browser test "
    "needs one; scripts/setup.sh installs Debian's chromium where apt-get is available")]
STARTUP_SECONDS = 30.0
REPLY_SECONDS = 30.0
PLOTS = ("plot-frontier", "plot-groups-1", "plot-groups-2", "plot-weights", "plot-predicted")

MEASURE_SVGS = """
Array.from(document.querySelectorAll('svg')).map((svg) => {
  const box = svg.getBoundingClientRect();
  const drawn = Array.from(svg.querySelectorAll('path, use, text')).filter((el) => {
    const b = el.getBoundingClientRect();
    return b.width > 0 || b.height > 0;
  });
  return {figure: svg.closest('figure') ? svg.closest('figure').id : null, width: box.width,
          height: box.height, paths: svg.querySelectorAll('path').length, drawn: drawn.length};
})
"""
COUNT_FRONTIER_MARKERS = """
({soft: document.querySelectorAll('#frontier-soft use').length,
  hard: document.querySelectorAll('#frontier-hard use').length,
  before: document.querySelectorAll('#frontier-before use').length,
  chosen: document.querySelectorAll('#frontier-chosen use').length})
"""


class DevTools:
    """A minimal Chrome DevTools Protocol client: one websocket to the browser, commands to
    flattened target sessions, every event kept in :attr:`events`."""

    def __init__(self, url: str) -> None:
        self._socket = websocket.create_connection(url, timeout=REPLY_SECONDS, suppress_origin=True)
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self._socket.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             ) -> dict[str, Any]:
        """Run one command and return its result (an error reply fails the test)."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self._last_id:
                assert "error" not in reply, (method, reply["error"])
                result: dict[str, Any] = reply.get("result", {})
                return result

    def wait_for(self, method: str, session: str, seconds: float) -> dict[str, Any]:
        """The first event ``method`` of ``session``, waiting up to ``seconds`` for it."""
        deadline = time.monotonic() + seconds
        while True:
            for event in self.events:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            assert time.monotonic() < deadline, f"no {method} within {seconds} s"
            self._receive()

    def close(self) -> None:
        """Close the websocket."""
        self._socket.close()


def _devtools_url(log: Path, process: subprocess.Popen[bytes]) -> str:
    """The browser's websocket address, from the "DevTools listening on ws://..." line it logs."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("DevTools listening on "):
                return line.removeprefix("DevTools listening on ").strip()
        assert process.poll() is None, f"chromium exited {process.returncode}: {log.read_text()[-2000:]}"
        time.sleep(0.1)
    raise AssertionError(f"chromium did not report its DevTools address: {log.read_text()[-2000:]}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """Headless Chromium on a fresh profile and a CDP client to it; the browser is killed after."""
    assert CHROMIUM is not None
    log = tmp_path / "chromium.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        client = DevTools(_devtools_url(log, process))
        try:
            yield client
        finally:
            client.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _open(browser: DevTools, url: str) -> str:
    """A new tab with every domain the test listens to enabled, navigated to ``url``; its session."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = str(browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": 1100, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
    browser.send("Page.navigate", {"url": url}, session)
    browser.wait_for("Page.loadEventFired", session, 60)
    return session


def _evaluate(browser: DevTools, session: str, expression: str) -> Any:
    reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    assert "exceptionDetails" not in reply, reply
    return reply["result"]["value"]


def _errors(events: list[dict[str, Any]], session: str) -> list[dict[str, Any]]:
    mine = [e for e in events if e.get("sessionId") == session]
    return [e for e in mine
            if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
            or e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def _screenshot(browser: DevTools, session: str, path: Path) -> bytes:
    size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    shot = browser.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session)
    png = base64.b64decode(shot["data"])
    path.write_bytes(png)
    return png


@pytest.mark.timeout(120)
def test_the_page_loads_offline_without_errors_and_draws_every_plot(
        browser: DevTools, adult_report: dict[str, Any], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(adult_report), encoding="utf-8")
    session = _open(browser, page.as_uri())

    svgs = _evaluate(browser, session, MEASURE_SVGS)
    assert [svg["figure"] for svg in svgs] == list(PLOTS)
    for svg in svgs:
        assert 300 < svg["width"] <= 641 and svg["height"] > 100, svg
        assert svg["paths"] > 0 and svg["drawn"] > 10, svg
    markers = _evaluate(browser, session, COUNT_FRONTIER_MARKERS)
    assert markers == {"soft": 10, "hard": 4, "before": 1, "chosen": 1}
    banner = _evaluate(browser, session, "document.querySelector('.banner .verdict').innerText")
    assert banner.endswith("TARGET MET" if adult_report["target_met"] else "TARGET NOT MET")

    png = _screenshot(browser, session, tmp_path / "report.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000

    requested = [e["params"]["request"]["url"] for e in browser.events
                 if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session]
    assert requested == [page.as_uri()]
    assert _errors(browser.events, session) == []
