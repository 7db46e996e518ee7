"""Markdown data-URI images and the self-contained HTML report: hostile text never becomes markup."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mw_core.charts.embed import ReportSection, markdown_image, render_report_html, write_report_html
from mw_core.charts.model import Chart
from mw_core.charts.render import text_chart

pytestmark = pytest.mark.unit

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)"> "quoted" & </section><h1>x'


@pytest.fixture(scope="module")
def chart() -> Chart:
    return text_chart("BTCUSDT <b>bold</b>", "No price data.", reason="no data in window")


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_markdown_image_is_a_data_uri_with_a_safe_alt(chart: Chart) -> None:
    md = markdown_image(chart, "BTC](javascript:alert(1)) [x]\nnext <b>")
    m = re.fullmatch(r"!\[([^\]\n]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert m is not None, md[:120]
    assert base64.b64decode(m.group(2)) == chart.png
    assert "<" not in m.group(1) and "(" not in m.group(1)


def test_hostile_text_never_appears_as_markup(chart: Chart, tmp_path: Path) -> None:
    sections = [
        ReportSection(
            heading=HOSTILE,
            chart=chart,
            notes=[HOSTILE],
            table=[{"headline": HOSTILE, HOSTILE: 1.5, "none": None}],
        )
    ]
    path = write_report_html(tmp_path / "reports" / "r.html", HOSTILE, sections)
    text = path.read_text()
    assert text == render_report_html(HOSTILE, sections)
    assert (
        "<script" not in text
        and "<img src=x" not in text
        and "onerror=" not in text.replace("onerror=&quot;", "")
    )
    parser = _Tags()
    parser.feed(text)
    assert "script" not in parser.tags
    assert parser.tags.count("h1") == 1 and parser.tags.count("img") == 1
    # The only attribute values are ours: the data URI, sizes, alt text, CSP, charset, lang, class.
    srcs = [v for k, v in parser.attrs if k == "src"]
    assert len(srcs) == 1 and srcs[0] is not None and srcs[0].startswith("data:image/png;base64,")
    assert "&lt;script&gt;" in text


def test_report_is_written_atomically_and_self_contained(chart: Chart, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "report.html"
    write_report_html(target, "t", [ReportSection(heading="h", chart=chart)])
    write_report_html(target, "t2", [ReportSection(heading="h2")])
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]
    text = target.read_text()
    assert "http://" not in text and "https://" not in text and "<h2>h2</h2>" in text
