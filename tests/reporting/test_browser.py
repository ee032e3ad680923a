"""The report page in a real headless Chromium, driven over the Chrome DevTools Protocol: it loads
with no console errors, requests nothing but itself, and draws every plot; a screenshot of the
whole page is written next to it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    DevTools,
    console_errors,
    evaluate,
    launch,
    needs_chromium,
    open_page,
    requested_urls,
    screenshot,
)
from workers.reporting.page import render_html

pytestmark = [pytest.mark.slow, needs_chromium]
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
TEXTS_OUTSIDE_THEIR_SVG = """
Array.from(document.querySelectorAll('figure.plot svg')).flatMap((svg) => {
  const box = svg.getBoundingClientRect();
  return Array.from(svg.querySelectorAll('text')).filter((text) => {
    const b = text.getBoundingClientRect();
    return b.width > 0 && (b.left < box.left - 1 || b.right > box.right + 1 || b.top < box.top - 1
                           || b.bottom > box.bottom + 1);
  }).map((text) => svg.closest('figure').id + ': ' + text.textContent);
})
"""
COUNT_FRONTIER_MARKERS = """
({soft: document.querySelectorAll('#frontier-soft use').length,
  hard: document.querySelectorAll('#frontier-hard use').length,
  before: document.querySelectorAll('#frontier-before use').length,
  chosen: document.querySelectorAll('#frontier-chosen use').length})
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """Headless Chromium on a fresh profile (tests/browser.py)."""
    with launch(tmp_path) as client:
        yield client


@pytest.mark.timeout(120)
def test_the_page_loads_offline_without_errors_and_draws_every_plot(
        browser: DevTools, adult_report: dict[str, Any], tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(adult_report), encoding="utf-8")
    session = open_page(browser, page.as_uri())

    svgs = evaluate(browser, session, MEASURE_SVGS)
    assert [svg["figure"] for svg in svgs] == list(PLOTS)
    for svg in svgs:
        assert 300 < svg["width"] <= 641 and svg["height"] > 100, svg
        assert svg["paths"] > 0 and svg["drawn"] > 10, svg
    markers = evaluate(browser, session, COUNT_FRONTIER_MARKERS)
    assert markers == {"soft": 10, "hard": 4, "before": 1, "chosen": 1}
    banner = evaluate(browser, session, "document.querySelector('.banner .verdict').innerText")
    assert banner.endswith("TARGET MET" if adult_report["target_met"] else "TARGET NOT MET")

    png = screenshot(browser, session, tmp_path / "report.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000

    assert requested_urls(browser.events, session) == [page.as_uri()]
    assert console_errors(browser.events, session) == []


@pytest.mark.timeout(120)
def test_no_plot_text_runs_out_of_its_plot(browser: DevTools, adult_report: dict[str, Any],
                                           tmp_path: Path) -> None:
    """As the browser lays the text out, with a group name far longer than the plot's margin."""
    report = copy.deepcopy(adult_report)
    long_name = "Native Hawaiian or Other Pacific Islander, self-described (a long group name)"
    for stage in ("before", "after"):
        for split in report[stage].values():
            split["groups"] = {long_name if k == "Female" else k: v for k, v in split["groups"].items()}
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    session = open_page(browser, page.as_uri())
    assert evaluate(browser, session, TEXTS_OUTSIDE_THEIR_SVG) == []
