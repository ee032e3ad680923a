"""The plots' margins from their texts' extents: every text, however long, lies inside its
figure, and the figure keeps its size unless the texts need more room."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workers.reporting import plots
from workers.reporting.layout import DPI, fit_row

pytestmark = pytest.mark.slow

LONG = "Native Hawaiian or Other Pacific Islander, self-described (a long group name)"
TOLERANCE_PT = 1.0
"""Agg's hinted metrics (``get_tightbbox`` measures with Agg) differ a little from the SVG
backend's, which the layout uses."""


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Figure]]:
    """The figures the plot functions lay out, in order."""
    figures: list[Figure] = []

    def keep(fig: Figure, axes: Sequence[Axes], passes: int = 2) -> None:
        figures.append(fig)
        fit_row(fig, axes, passes)

    monkeypatch.setattr(plots, "fit_row", keep)
    yield figures


def _reach_pt(fig: Figure) -> tuple[float, float, float, float]:
    """How far, in points, the figure's drawn artists reach beyond its left, bottom, right and top
    edges (negative: inside), as constrained layout would measure them."""
    box = fig.get_tightbbox()
    width, height = fig.get_size_inches()
    return (-box.x0 * DPI, -box.y0 * DPI, (box.x1 - width) * DPI, (box.y1 - height) * DPI)


def _renamed(report: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(report)
    for stage in ("before", "after"):
        for split in out[stage].values():
            split["groups"] = {names.get(k, k): v for k, v in split["groups"].items()}
    return out


def _all_plots(report: dict[str, Any]) -> list[Callable[[], str]]:
    histogram = report["weights"]["histogram"]
    before, after = report["before"]["eval"]["groups"], report["after"]["eval"]["groups"]
    return [lambda: plots.frontier_svg(report, "eval", report["frontier"]),
            lambda: plots.group_bars_svg(before, after, "eval"),
            lambda: plots.weights_svg(histogram["edges"], histogram["counts"]),
            lambda: plots.predicted_svg(report["predicted"]["iterations"])]


def test_every_text_of_every_plot_lies_inside_its_figure(adult_report: dict[str, Any],
                                                         drawn: list[Figure]) -> None:
    for render in _all_plots(adult_report):
        render()
    assert len(drawn) == 4
    for fig in drawn:
        assert max(_reach_pt(fig)) <= TOLERANCE_PT, _reach_pt(fig)
        assert fig.get_figwidth() == pytest.approx(plots.WIDTH_IN)


@pytest.mark.parametrize("name", [LONG, "x", LONG * 3, "two\nlines"])
def test_group_names_of_any_length_fit(adult_report: dict[str, Any], drawn: list[Figure], name: str) -> None:
    """A long group name widens the figure (the page scales it to its column) rather than
    running out of it or over the bars."""
    report = _renamed(adult_report, {"Female": name})
    svg = plots.group_bars_svg(report["before"]["eval"]["groups"], report["after"]["eval"]["groups"], "eval")
    assert name.split("\n")[0] in svg
    fig = drawn[-1]
    assert max(_reach_pt(fig)) <= TOLERANCE_PT, _reach_pt(fig)
    labels = max(label.get_window_extent().x1 for label in fig.axes[0].get_yticklabels())
    assert labels <= fig.axes[0].get_window_extent().x0
    bars = [ax.get_window_extent() for ax in fig.axes]
    assert all(box.width >= 72.0 - TOLERANCE_PT for box in bars)
    assert all(a.x1 < b.x0 for a, b in itertools.pairwise(bars))
    if name == "x":
        assert fig.get_figwidth() == pytest.approx(plots.WIDTH_IN)


def test_an_offset_text_and_many_groups_fit(adult_report: dict[str, Any], drawn: list[Figure]) -> None:
    """Counts in the millions get an offset text (``1e7``) above the axis; eight groups a taller
    figure: both inside their figures."""
    histogram = adult_report["weights"]["histogram"]
    plots.weights_svg(histogram["edges"], [count * 1000 for count in histogram["counts"]])
    groups = {f"group {i}": {"n": 10**9, "selection_rate": 0.1 * i, "tpr": None, "fpr": 1.0}
              for i in range(8)}
    plots.group_bars_svg(groups, groups, "eval")
    assert drawn[0].axes[0].yaxis.get_offset_text().get_text() == "1e7"
    for fig in drawn:
        assert max(_reach_pt(fig)) <= TOLERANCE_PT, _reach_pt(fig)
