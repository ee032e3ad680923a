"""The report's HTML page, rendered from the real Adult report: self-contained, escaped,
complete, and still rendering when the optional keys (of older reports) are missing."""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

import pytest

from workers.reporting.page import render_html

pytestmark = pytest.mark.slow

EVIL = "<script>alert(1)</script>"
SECTIONS = ("summary", "metrics", "groups", "frontier", "group-rates", "weights", "predicted", "provenance",
            "timings")
OPTIONAL_MESSAGES = ("This report has no frontier", "This report has no weight histogram",
                     "This report has no provenance section")


class _Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


def _svgs(page: str) -> dict[str, ET.Element]:
    """The inline SVGs by the id of their figure, each parsed as XML (so each is well formed)."""
    found = re.findall(r'<figure class="plot" id="([^"]+)">.*?(<svg\b.*?</svg>)', page, re.S)
    return {figure: ET.fromstring(svg) for figure, svg in found}


def _by_id(root: ET.Element, element_id: str) -> ET.Element:
    matches = [el for el in root.iter() if el.get("id") == element_id]
    assert len(matches) == 1, (element_id, len(matches))
    return matches[0]


def _rename_group(report: dict[str, Any], old: str, new: str) -> None:
    for stage in ("before", "after"):
        for split in report[stage].values():
            split["groups"] = {new if k == old else k: v for k, v in split["groups"].items()}


def _without_optional(report: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(report)
    for key in ("frontier", "frontier_info", "provenance"):
        out.pop(key, None)
    out["weights"].pop("histogram", None)
    out["target"].pop("headline", None)
    return out


def test_the_page_is_self_contained(adult_report: dict[str, Any]) -> None:
    page = render_html(adult_report)
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    assert "@import" not in page and "@font-face" not in page
    for tag, attrs in _tags(page):
        for name in ("src", "href", "srcset", "action", "xlink:href"):
            value = attrs.get(name)
            assert value is None or value.startswith("#"), (tag, name, value)
    assert re.findall(r"url\((?!#)", page) == []
    assert page.lstrip().lower().startswith("<!doctype html>")


def test_user_strings_are_escaped_everywhere(adult_report: dict[str, Any]) -> None:
    report = copy.deepcopy(adult_report)
    _rename_group(report, "Female", EVIL)
    report["notes"].append(f"see https://example.org/?q={EVIL}")
    report["warnings"].append({"code": "small_group", "message": f"group {EVIL} is small"})
    report["data"]["sensitive_attribute"] = EVIL
    report["spec"]["objective"]["sensitive_attribute"] = EVIL
    report["provenance"]["report_id"] = EVIL
    report["frontier"][0]["guard"] = {"accepted": False, "reason": EVIL}
    page = render_html(report)
    assert "<script" not in page.lower()
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 9
    assert [value for _, attrs in _tags(page) for value in attrs.values()
            if value and value.startswith("http")] == []
    svgs = _svgs(page)
    labels = ["".join(text.itertext()) for text in svgs["plot-groups-1"].iter("text")]
    assert f"{EVIL} (n={report['before']['audit']['groups'][EVIL]['n']})" in labels


def test_a_dollar_in_a_group_name_is_text_not_mathtext(adult_report: dict[str, Any]) -> None:
    report = copy.deepcopy(adult_report)
    _rename_group(report, "Male", "a $b$ c")
    assert "a $b$ c (n=" in render_html(report)


def test_the_frontier_plot_has_one_marker_per_point(adult_report: dict[str, Any]) -> None:
    frontier = _svgs(render_html(adult_report))["plot-frontier"]
    reductions = adult_report["frontier_info"]["reductions"]
    assert len(list(_by_id(frontier, "frontier-soft").iter("use"))) == len(reductions) == 10
    hard = adult_report["frontier_info"]["k_fractions"]
    assert len(list(_by_id(frontier, "frontier-hard").iter("use"))) == len(hard)
    assert len(list(_by_id(frontier, "frontier-before").iter("use"))) == 1
    assert len(list(_by_id(frontier, "frontier-chosen").iter("use"))) == 1
    labels = ["".join(el.itertext()) for el in frontier.iter("text")]
    assert [f"ρ={r:g}" for r in reductions] == [t for t in labels if t.startswith("ρ=")]
    assert {"k=1%", "k=2%", "k=5%", "k=10%"} <= set(labels)


def test_every_plot_is_well_formed_inline_svg_with_unique_ids(adult_report: dict[str, Any]) -> None:
    page = render_html(adult_report)
    svgs = _svgs(page)
    assert list(svgs) == ["plot-frontier", "plot-groups-1", "plot-groups-2", "plot-weights", "plot-predicted"]
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page and "<metadata" not in page
    ids = [attrs["id"] for _, attrs in _tags(page) if attrs.get("id")]
    assert len(ids) == len(set(ids))
    for reference in re.findall(r'(?:href="#|url\(#)([^")]+)', page):
        assert reference in ids, reference
    weights = svgs["plot-weights"]
    counts = adult_report["weights"]["histogram"]["counts"]
    bars = [el for el in weights.iter() if (el.get("id") or "").startswith("weights-bar-")]
    assert len(bars) == len(counts)


def test_plots_are_deterministic(adult_report: dict[str, Any]) -> None:
    assert render_html(adult_report) == render_html(copy.deepcopy(adult_report))


def test_summary_comes_first_and_sections_are_in_order(adult_report: dict[str, Any]) -> None:
    page = render_html(adult_report)
    positions = [page.index(f'<section id="{name}">') for name in SECTIONS]
    assert positions == sorted(positions)
    summary = page[positions[0]:positions[1]]
    assert ("TARGET MET" if adult_report["target_met"] else "TARGET NOT MET") in summary
    assert adult_report["target"]["surrogate"] in summary
    for warning in adult_report["warnings"]:
        assert f'<span class="code">{warning["code"]}</span>' in summary
    failed = copy.deepcopy(adult_report)
    failed["target_met"] = False
    failed["target"]["headline"] = "Eval DP went from 0.21 to 0.20 & stayed within noise."
    page = render_html(failed)
    assert "TARGET NOT MET" in page and "Eval DP went from 0.21 to 0.20 &amp; stayed within noise." in page


def test_metric_tables_show_intervals_and_changes_within_noise(adult_report: dict[str, Any]) -> None:
    page = render_html(adult_report)
    within = [metric for split in adult_report["confidence"].values() for metric in split.values()
              if isinstance(metric, dict) and metric["change"]["within_noise"]]
    assert page.count('<span class="noise">within noise</span>') == len(within)
    accuracy = adult_report["confidence"]["eval"]["accuracy"]
    for stage in ("before", "after", "change"):
        assert f"[{accuracy[stage]['low']:.4f}, {accuracy[stage]['high']:.4f}]" in page


def test_group_tables_show_counts_beside_rates(adult_report: dict[str, Any]) -> None:
    page = render_html(adult_report)
    for split in ("audit", "eval"):
        for group, row in adult_report["before"][split]["groups"].items():
            counts = "".join(f'<td class="n" rowspan="2">{row[k]}</td>'
                             for k in ("n", "positives", "negatives"))
            assert f'<td rowspan="2">{group}</td>{counts}' in page


def test_the_real_report_renders_and_says_what_it_lacks(adult_report: dict[str, Any]) -> None:
    page = render_html(_without_optional(adult_report))
    for message in OPTIONAL_MESSAGES:
        assert message in page
    svgs = _svgs(page)
    assert "plot-frontier" in svgs and "plot-weights" not in svgs
    assert len(list(_by_id(svgs["plot-frontier"], "frontier-chosen").iter("use"))) == 1
    assert "<table>" in page


def test_an_old_minimal_report_renders(adult_report: dict[str, Any]) -> None:
    report = _without_optional(adult_report)
    report.pop("confidence")
    report.pop("report_version")
    report["predicted"] = {"target_change": 0.0, "utility_change": 0.0}
    del report["before"]["audit"]["groups"]["Male"]["tpr"]
    report["frontier"] = [{"reduction": 0.5}, {"k_fraction": 0.1, "eval": {"accuracy": 0.8}}]
    report["frontier_info"] = {"skipped": None}
    page = render_html(report)
    assert "No tracking steps were recorded" in page
    assert "This report has no confidence intervals for eval." in page


def test_a_skipped_frontier_shows_the_reason_instead_of_the_plot(adult_report: dict[str, Any]) -> None:
    report = copy.deepcopy(adult_report)
    report["frontier"] = []
    report["frontier_info"]["skipped"] = "the time budget <60 s> was spent"
    page = render_html(report)
    assert "plot-frontier" not in _svgs(page)
    assert "The frontier was not computed: the time budget &lt;60 s&gt; was spent" in page


def test_a_robustness_report_plots_robust_accuracy(adult_report: dict[str, Any]) -> None:
    report = copy.deepcopy(adult_report)
    report["target"]["hard_metric"] = "robust_accuracy"
    frontier = _svgs(render_html(report))["plot-frontier"]
    labels = ["".join(el.itertext()) for el in frontier.iter("text")]
    assert any(label.startswith("robust accuracy on eval") for label in labels)
    soft = report["frontier_info"]["reductions"]
    assert len(list(_by_id(frontier, "frontier-soft").iter("use"))) == len(soft)
