"""Subplot margins from the extents of a figure's texts, in place of constrained layout.

Constrained layout measures the tight bounding box of every axes (tick labels of every shared
sibling included) twice and then draws the figure once without output before the real draw: for
the report's figures that was about half of their rendering time. :func:`fit_row` instead
measures, with the font metrics the SVG backend uses, only the texts that can lie outside an
axes (tick labels in view, axis labels and offset texts where the draw will put them, titles,
texts, annotations, legends), sets the margins with ``subplots_adjust`` so that all of them lie
inside the figure, and measures once more (tick locators and annotation positions depend on the
axes' size). Where the texts leave an axes less than :data:`MIN_AXES_PT`, the figure is made
larger instead of letting the texts overlap or leave the figure: the page scales the SVG to its
column width.

The figures must be created with ``dpi=72`` (what the SVG backend draws at), so that display
units are points.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.axis import Axis, XAxis
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend
from matplotlib.text import Text
from matplotlib.textpath import text_to_path
from matplotlib.transforms import Bbox

__all__ = ["DPI", "MIN_AXES_PT", "PAD_PT", "fit_row"]

DPI = 72
"""The figures' dpi: display units are points, as in the SVG the backend writes."""
PAD_PT = 3.0
"""Space kept between the texts and the figure's edge (constrained layout's default pad)."""
GAP_PT = 12.0
"""Space kept between the texts of neighbouring axes."""
MIN_AXES_PT = 72.0
"""The least width and height an axes keeps; longer texts make the figure larger."""
LEGEND_PAD_PT = 4.0
"""The gap a legend at the figure's bottom keeps to it (``legend.borderaxespad`` at 8 pt)."""


class _Metrics(RendererBase):
    """Measures text as the SVG backend does (unhinted outlines, in points); draws nothing."""

    def get_text_width_height_descent(self, s: str, prop: FontProperties,
                                      ismath: bool | Literal["TeX"]) -> tuple[float, float, float]:
        """Width, height and descent of ``s`` in points."""
        return text_to_path.get_text_width_height_descent(s, prop, ismath)


_METRICS = _Metrics()


@dataclass(frozen=True)
class _Margins:
    """How far, in points, the texts of one axes reach beyond it on each side."""

    left: float
    right: float
    bottom: float
    top: float


def _size(text: Text) -> tuple[float, float]:
    """Width and height, in points, of ``text`` as drawn (rotation included); zero if it is empty."""
    if not text.get_visible() or not text.get_text():
        return 0.0, 0.0
    box = text.get_window_extent(_METRICS, dpi=DPI)
    return box.width, box.height


def _tick_label_boxes(axis: Axis, ax_box: Bbox) -> list[Bbox]:
    """The boxes of the axis' major tick labels that the draw will show: those of ticks within the
    axes' extent along the axis, as the draw keeps them."""
    along_x = isinstance(axis, XAxis)
    boxes = []
    for label in axis.get_majorticklabels():
        if not label.get_visible() or not label.get_text():
            continue
        box = label.get_window_extent(_METRICS, dpi=DPI)
        centre = (box.x0 + box.x1) / 2 if along_x else (box.y0 + box.y1) / 2
        low, high = (ax_box.x0, ax_box.x1) if along_x else (ax_box.y0, ax_box.y1)
        if low - 1.0 <= centre <= high + 1.0:
            boxes.append(box)
    return boxes


def _offset_text(axis: Axis) -> Text:
    """The axis' offset text (such as ``1e7``) with the text the draw will give it (it sets the
    text only while drawing)."""
    axis.offsetText.set_text(axis.get_major_formatter().get_offset())
    return axis.offsetText


def _tick_out(axis: Axis) -> float:
    """How far, in points, the major tick marks reach out of the axes."""
    ticks = axis.get_major_ticks(1)
    return ticks[0].get_tick_padding() if ticks else 0.0


def _x_decorations(ax: Axes, ax_box: Bbox) -> list[Bbox]:
    """Tick labels, axis label and offset text of the x axis, where the draw will put them."""
    axis = ax.xaxis
    boxes = _tick_label_boxes(axis, ax_box)
    bottom = min([ax_box.y0 - _tick_out(axis), *(box.y0 for box in boxes)])
    width, height = _size(axis.label)
    if height:
        top = bottom - axis.labelpad
        centre = (ax_box.x0 + ax_box.x1) / 2
        boxes.append(Bbox.from_bounds(centre - width / 2, top - height, width, height))
    width, height = _size(_offset_text(axis))
    if height:
        boxes.append(Bbox.from_bounds(ax_box.x1 - width, bottom - Axis.OFFSETTEXTPAD - height, width, height))
    return boxes


def _y_decorations(ax: Axes, ax_box: Bbox) -> list[Bbox]:
    """Tick labels, axis label and offset text of the y axis, where the draw will put them."""
    axis = ax.yaxis
    boxes = _tick_label_boxes(axis, ax_box)
    left = min([ax_box.x0 - _tick_out(axis), *(box.x0 for box in boxes)])
    width, height = _size(axis.label)
    if width:
        right = left - axis.labelpad
        centre = (ax_box.y0 + ax_box.y1) / 2
        boxes.append(Bbox.from_bounds(right - width, centre - height / 2, width, height))
    width, height = _size(_offset_text(axis))
    if height:
        boxes.append(Bbox.from_bounds(ax_box.x0, ax_box.y1 + Axis.OFFSETTEXTPAD, width, height))
    return boxes


def _margins(ax: Axes) -> _Margins:
    """How far the texts drawn with ``ax`` reach beyond it, at its present position."""
    ax_box = ax.get_window_extent()
    boxes = [*_x_decorations(ax, ax_box), *_y_decorations(ax, ax_box)]
    boxes += [box for text in (ax.title, *ax.texts) if text.get_visible() and text.get_text()
              if (box := text.get_tightbbox(_METRICS)) is not None]
    legend = ax.get_legend()
    if legend is not None:
        boxes.append(legend.get_window_extent(_METRICS))
    reach = Bbox.union([ax_box, *boxes])
    return _Margins(left=ax_box.x0 - reach.x0, right=reach.x1 - ax_box.x1, bottom=ax_box.y0 - reach.y0,
                    top=reach.y1 - ax_box.y1)


def _legend_height(legends: Sequence[Legend]) -> float:
    """Points kept at the figure's bottom for its legends (placed at ``lower center``)."""
    heights = [legend.get_window_extent(_METRICS).height for legend in legends]
    return max(heights) + LEGEND_PAD_PT if heights else 0.0


def _apply(fig: Figure, margins: Sequence[_Margins], below: float) -> None:
    """Set the subplot parameters of a one-row grid for ``margins``, enlarging the figure where
    the axes would be left less than :data:`MIN_AXES_PT`."""
    n = len(margins)
    left = PAD_PT + margins[0].left
    right = PAD_PT + margins[-1].right
    gap = max((a.right + b.left for a, b in itertools.pairwise(margins)), default=0.0) + GAP_PT
    bottom = PAD_PT + below + max(m.bottom for m in margins)
    top = PAD_PT + max(m.top for m in margins)
    width = max(fig.get_figwidth() * DPI, left + right + (n - 1) * gap + n * MIN_AXES_PT)
    height = max(fig.get_figheight() * DPI, bottom + top + MIN_AXES_PT)
    fig.set_size_inches(width / DPI, height / DPI)
    axes_width = (width - left - right - (n - 1) * gap) / n
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap / axes_width if n > 1 else None)


def fit_row(fig: Figure, axes: Sequence[Axes], passes: int = 2) -> None:
    """Margins for ``axes`` (one row of subplots of ``fig``, left to right) and the figure's
    legends below them, so that every text lies inside the figure; the figure's width and height
    are kept unless the texts need more room."""
    for _ in range(passes):
        _apply(fig, [_margins(ax) for ax in axes], _legend_height(fig.legends))
