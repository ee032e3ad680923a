"""The report's plots as SVG text to inline into the HTML page.

Figures are drawn with :class:`matplotlib.figure.Figure` directly (no pyplot, no global figure
state), at 72 dpi with margins from their texts' extents (:mod:`workers.reporting.layout`, not
constrained layout: half the time) and written by the SVG backend with text kept as text
(``svg.fonttype = "none"``), a fixed hash salt and no date, so the same report gives
byte-identical SVG. :func:`inline_svg` strips
the XML prolog, doctype, metadata and namespace declarations and prefixes every ``id`` (and every
reference to one) with the plot's name, so several plots can share one page without id clashes:
an artist drawn with ``gid="soft"`` in the ``frontier`` plot is ``<g id="frontier-soft">`` in the
page. Colours are the Okabe–Ito palette (distinguishable with the common colour-vision
deficiencies), and every series also differs by marker or position.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.typing import RcKeyType

from workers.reporting.layout import DPI, fit_row

__all__ = ["RATES", "frontier_svg", "group_bars_svg", "inline_svg", "predicted_svg", "weights_svg"]

BEFORE = "#E69F00"
AFTER = "#0072B2"
SOFT = "#009E73"
HARD = "#CC79A7"
NEUTRAL = "#555555"

WIDTH_IN = 6.667
"""Figure width in inches: 480 pt, shown 640 CSS pixels wide."""

RATES = (("selection_rate", "selection rate"), ("tpr", "true positive rate"), ("fpr", "false positive rate"))
"""The per-group rates plotted and tabulated, with their labels."""

_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "softunlearn-report",
    "text.parse_math": False,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#dddddd",
    "grid.linewidth": 0.6,
    "axes.axisbelow": True,
}
_METADATA: dict[str, Any] = {"Date": None, "Creator": None}

_PROLOG_STYLE = re.compile(r"<defs>\s*<style[^>]*>[^<]*</style>\s*</defs>\s*")
_METADATA_BLOCK = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_XMLNS = re.compile(r'\s+xmlns(?::\w+)?="[^"]*"')
_TAG = re.compile(r"<[^<>]+>")
_ID = re.compile(r'(\sid=")([^"]*")')
_REFERENCE = re.compile(r'(url\(#|href="#)')


def inline_svg(svg: str, prefix: str) -> str:
    """``svg`` (a matplotlib SVG document) as an element to inline into HTML, ids under ``prefix``."""
    body = svg[svg.index("<svg"):]
    body = _METADATA_BLOCK.sub("", body, count=1)
    body = _PROLOG_STYLE.sub("", body, count=1)
    body = _XMLNS.sub("", body, count=3).replace('xlink:href="#', 'href="#')

    def rename(tag: re.Match[str]) -> str:
        text = _ID.sub(lambda m: f"{m[1]}{prefix}-{m[2]}", tag[0])
        return _REFERENCE.sub(lambda m: f"{m[1]}{prefix}-", text)

    return _TAG.sub(rename, body).strip()


def _render(fig: Figure, prefix: str) -> str:
    """``fig`` laid out (:func:`~workers.reporting.layout.fit_row`) and inlined under ``prefix``."""
    fit_row(fig, fig.axes)
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata=_METADATA)
    return inline_svg(buffer.getvalue(), prefix)


def _number(value: Any) -> float | None:
    """``value`` as a float, or None where it is absent, not a number or NaN."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if value != value else float(value)


def _error(value: float, interval: Mapping[str, Any] | None) -> list[list[float]] | None:
    """Asymmetric error-bar lengths around ``value`` from a ``{"low", "high"}`` interval."""
    if not interval:
        return None
    low, high = _number(interval.get("low")), _number(interval.get("high"))
    if low is None or high is None:
        return None
    return [[max(value - low, 0.0)], [max(high - value, 0.0)]]


def _metric_label(metric: str) -> str:
    return metric.replace("_", " ")


def _point(ax: Axes, row: Mapping[str, Any], metric: str, cis: Mapping[str, Any], stage: str, gid: str,
           style: Mapping[str, Any]) -> None:
    """One model (input or chosen) with its bootstrap intervals in x and y where known; the marker
    gets ``gid``, its error bars ``gid-ci``."""
    x, y = _number(row.get(metric)), _number(row.get("accuracy"))
    if x is None or y is None:
        return
    container = ax.errorbar([x], [y], xerr=_error(x, (cis.get(metric) or {}).get(stage)),
                            yerr=_error(y, (cis.get("accuracy") or {}).get(stage)), capsize=3,
                            elinewidth=1, linestyle="none", zorder=4, **style)
    marker, _, bars = container.lines
    marker.set_gid(gid)
    for i, bar in enumerate(bars):
        bar.set_gid(f"{gid}-ci-{i}")


def _frontier_series(points: Sequence[Mapping[str, Any]], split: str, metric: str, key: str,
                     ) -> list[tuple[float, float, float]]:
    """(x, y, setting) of the frontier points that carry ``key``, sorted by setting."""
    series = []
    for point in points:
        values = point.get(split)
        setting = _number(point.get(key))
        if not isinstance(values, Mapping) or setting is None:
            continue
        x, y = _number(values.get(metric)), _number(values.get("accuracy"))
        if x is not None and y is not None:
            series.append((x, y, setting))
    return sorted(series, key=lambda item: item[2])


def _label_points(ax: Axes, series: Sequence[tuple[float, float, float]], text: str, colour: str,
                  gid: str, right: bool) -> None:
    """Label each point with its setting, to the lower right or to the upper left of it."""
    offset, align = ((6, -9), "left") if right else ((-6, 5), "right")
    for i, (x, y, setting) in enumerate(series):
        ax.annotate(text.format(setting), (x, y), xytext=offset, textcoords="offset points", fontsize=7,
                    color=colour, ha=align, gid=f"{gid}-{i}")


def frontier_svg(report: Mapping[str, Any], split: str, frontier: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy against the objective's hard-label metric on ``split``: the input model and the
    chosen correction (with 95 % intervals), the soft frontier (gid ``soft``, one marker per
    point, labelled ρ) and the hard-removal points (gid ``hard``, labelled k)."""
    metric = str(report["target"]["hard_metric"])
    cis = (report.get("confidence") or {}).get(split) or {}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 4.4), dpi=DPI)
        ax = fig.add_subplot()
        soft = _frontier_series(frontier, split, metric, "reduction")
        hard = _frontier_series(frontier, split, metric, "k_fraction")
        if soft:
            ax.plot([p[0] for p in soft], [p[1] for p in soft], color=SOFT, marker="o", markersize=5,
                    linewidth=1.2, label="soft frontier (ρ = requested reduction)", gid="soft", zorder=3)
            _label_points(ax, soft, "ρ={:g}", SOFT, "soft-label", right=True)
        if hard:
            ax.plot([p[0] for p in hard], [p[1] for p in hard], color=HARD, marker="s", markersize=5,
                    linestyle="none", label="hard removal (k = fraction removed)", gid="hard", zorder=3)
            _label_points(ax, hard, "k={:.0%}", HARD, "hard-label", right=False)
        _point(ax, report["before"][split], metric, cis, "before", "before",
               {"color": BEFORE, "marker": "D", "markersize": 7, "label": "before (input model)"})
        _point(ax, report["after"][split], metric, cis, "after", "chosen",
               {"color": AFTER, "marker": "*", "markersize": 11, "label": "chosen correction"})
        direction = "higher is more robust →" if metric == "robust_accuracy" else "← smaller gap is fairer"
        ax.set_xlabel(f"{_metric_label(metric)} on {split}   ({direction})")
        ax.set_ylabel(f"accuracy on {split}")
        fig.legend(loc="lower center", ncols=2, frameon=False)
        return _render(fig, "frontier")


def _stage_bars(ax: Axes, groups: Sequence[str], rows: Mapping[str, Any], key: str, offset: float,
                colour: str, label: str) -> None:
    """One stage's bars of one rate; a group whose rate is null gets "n/a" instead of a bar."""
    labelled = False
    for i, group in enumerate(groups):
        value = _number((rows.get(group) or {}).get(key))
        y = i + offset
        if value is None:
            ax.text(0.01, y, "n/a", va="center", fontsize=7, color=NEUTRAL)
            continue
        ax.barh([y], [value], height=0.38, color=colour, label=None if labelled else label)
        labelled = True
        ax.text(value + 0.01, y, f"{value:.2f}", va="center", fontsize=7, color=NEUTRAL)


def group_bars_svg(before: Mapping[str, Any], after: Mapping[str, Any], split: str) -> str:
    """Selection rate, TPR and FPR per group before and after on ``split``, from the report's
    ``groups`` maps; group labels carry the group sizes."""
    groups = list(dict.fromkeys([*before, *after]))
    labels = [f"{group} (n={(before.get(group) or after.get(group) or {}).get('n', '?')})"
              for group in groups]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 1.3 + 0.5 * len(groups)), dpi=DPI)
        axes = fig.subplots(1, len(RATES), sharey=True, squeeze=False)[0]
        for ax, (key, title) in zip(axes, RATES, strict=True):
            _stage_bars(ax, groups, before, key, -0.2, BEFORE, "before")
            _stage_bars(ax, groups, after, key, 0.2, AFTER, "after")
            ax.set_title(title)
            ax.set_xlim(0, 1.15)
            ax.set_xticks([0, 0.5, 1])
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(range(len(groups)), labels)
        axes[0].invert_yaxis()
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncols=2, frameon=False)
        return _render(fig, f"groups-{split}")


def weights_svg(edges: Sequence[float], counts: Sequence[int]) -> str:
    """Histogram of the effective training weights 1 + ε (bars, gid ``bars``), with weight 1
    (unchanged) and 0 (removed) marked."""
    widths = [high - low for low, high in itertools.pairwise(edges)]
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 3.2), dpi=DPI)
        ax = fig.add_subplot()
        bars = ax.bar(list(edges[:-1]), list(counts), width=widths, align="edge", color=AFTER,
                      edgecolor="white", linewidth=0.4)
        for i, patch in enumerate(bars):
            patch.set_gid(f"bar-{i}")
        ax.axvline(1.0, color=NEUTRAL, linestyle="--", linewidth=1, label="weight 1 (unchanged)")
        if edges[0] <= 0.0 <= edges[-1]:
            ax.axvline(0.0, color=HARD, linestyle=":", linewidth=1.2, label="weight 0 (at or below: removed)")
        ax.set_xlabel("effective weight 1 + ε of a training row")
        ax.set_ylabel("training rows")
        ax.legend(frameon=False, loc="upper left")
        return _render(fig, "weights")


def _changes(ax: Axes, iterations: Sequence[Mapping[str, Any]], kind: str, colour: str, title: str) -> None:
    """One panel: realized against predicted change per iteration, with the y = x line."""
    pairs = [(p, r) for p, r in ((_number(row.get(f"predicted_{kind}_change")),
                                  _number(row.get(f"realized_{kind}_change"))) for row in iterations)
             if p is not None and r is not None]
    values = [v for pair in pairs for v in pair] + [0.0]
    low, high = min(values), max(values)
    pad = max(high - low, 1e-3) * 0.12
    limits = (low - pad, high + pad)
    ax.plot(limits, limits, color=NEUTRAL, linestyle="--", linewidth=0.8, label="realized = predicted")
    ax.scatter([p for p, _ in pairs], [r for _, r in pairs], color=colour, s=28, zorder=3, gid=kind)
    for i, (p, r) in enumerate(pairs, start=1):
        ax.annotate(str(i), (p, r), xytext=(4, 3), textcoords="offset points", fontsize=7, color=colour)
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_locator(MaxNLocator(6))
    ax.set_title(title)
    ax.set_xlabel("predicted (first order)")


def predicted_svg(iterations: Sequence[Mapping[str, Any]]) -> str:
    """Predicted against realized audit target and utility (log-loss) change, one point per
    tracking iteration (gids ``target`` and ``utility``), numbered by iteration."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(WIDTH_IN, 3.3), dpi=DPI)
        target_ax, utility_ax = fig.subplots(1, 2)
        _changes(target_ax, iterations, "target", AFTER, "audit target (surrogate) change")
        _changes(utility_ax, iterations, "utility", BEFORE, "audit log-loss change")
        target_ax.set_ylabel("realized")
        target_ax.legend(frameon=False, loc="upper left")
        return _render(fig, "predicted")
