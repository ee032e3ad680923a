"""A real headless Chromium for page tests, driven over the Chrome DevTools Protocol (CDP): open
a page, evaluate JavaScript in it, list its console errors and requests, take a screenshot."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import websocket

__all__ = ["CHROMIUM", "DevTools", "console_errors", "evaluate", "launch", "needs_chromium", "open_page",
           "requested_urls", "screenshot", "wait_until"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary on PATH (chromium or chromium-browser): the browser tests "
    "need one; scripts/setup.sh installs Debian's chromium where apt-get is available")
STARTUP_SECONDS = 30.0
REPLY_SECONDS = 30.0


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


@contextmanager
def launch(workdir: Path) -> Iterator[DevTools]:
    """Headless Chromium on a fresh profile in ``workdir`` and a CDP client to it; the browser is
    killed after."""
    assert CHROMIUM is not None
    log = workdir / "chromium.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
             f"--user-data-dir={workdir / 'profile'}", "--no-first-run", "--no-default-browser-check",
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


def open_page(browser: DevTools, url: str, width: int = 1100, height: int = 900) -> str:
    """A new tab with every domain the tests listen to enabled, navigated to ``url``; its session."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = str(browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"])
    for domain in ("Runtime", "Log", "Network", "Page"):
        browser.send(f"{domain}.enable", session=session)
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
    browser.send("Page.navigate", {"url": url}, session)
    browser.wait_for("Page.loadEventFired", session, 60)
    return session


def evaluate(browser: DevTools, session: str, expression: str) -> Any:
    """The value of a JavaScript ``expression`` in the page (an exception fails the test)."""
    reply = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
    assert "exceptionDetails" not in reply, reply
    return reply["result"]["value"]


def console_errors(events: list[dict[str, Any]], session: str) -> list[dict[str, Any]]:
    """Console errors, uncaught exceptions and browser-logged errors (a CSP violation, a failed
    load) of ``session``."""
    mine = [e for e in events if e.get("sessionId") == session]
    return [e for e in mine
            if (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
            or e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]


def requested_urls(events: list[dict[str, Any]], session: str) -> list[str]:
    """Every URL ``session`` requested, in order."""
    return [e["params"]["request"]["url"] for e in events
            if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session]


def screenshot(browser: DevTools, session: str, path: Path) -> bytes:
    """A PNG of the whole page (beyond the viewport), written to ``path``."""
    size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
    shot = browser.send("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session)
    png = base64.b64decode(shot["data"])
    path.write_bytes(png)
    return png


def wait_until(browser: DevTools, session: str, expression: str, seconds: float) -> Any:
    """The first truthy value of ``expression``, polled every 0.1 s for up to ``seconds`` (for
    pages that render after their load event)."""
    deadline = time.monotonic() + seconds
    while True:
        value = evaluate(browser, session, expression)
        if value:
            return value
        assert time.monotonic() < deadline, f"{expression!r} stayed {value!r} for {seconds} s"
        time.sleep(0.1)
