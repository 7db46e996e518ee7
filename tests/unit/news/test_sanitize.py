"""Sanitising hostile feed content: no markup may survive, links are http(s) only."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mw_core.news.sanitize import (
    SUMMARY_MAX,
    TITLE_MAX,
    clean_link,
    clean_summary,
    clean_text,
    clean_title,
    has_markup,
)

pytestmark = pytest.mark.unit

MARKUP = re.compile(r"<[A-Za-z/!?]")

# (raw HTML, expected plain text)
HOSTILE: list[tuple[str, str]] = [
    ("<script>alert(1)</script>Bitcoin", "Bitcoin"),
    ("<SCRIPT type='text/javascript'>document.cookie</SCRIPT>ok", "ok"),
    ("before<script>never closed", "before"),
    ("<style>body{display:none}</style>visible", "visible"),
    ('<iframe src="https://evil.example">inner <b>text</b></iframe>after', "after"),
    ("<noscript><img src=x></noscript>shown", "shown"),
    ('<img src="x" onerror="alert(1)">caption', "caption"),
    ("<img src=x onerror=alert(1)//", ""),
    ("<svg onload=alert(1)><script>x</script></svg>svg", "svg"),
    ('<a href="javascript:alert(1)">click</a>', "click"),
    ('<div onclick="steal()" style="x">div</div>', "div"),
    # entity tricks: unescaped once, then the revealed markup is stripped as well
    ("&lt;script&gt;alert(1)&lt;/script&gt;news", "news"),
    ("&#x3C;img src=x onerror=alert(1)&#x3E;img", "img"),
    ("&#60;iframe&#62;in&#60;/iframe&#62;out", "out"),
    ("&LT;b&GT;bold&LT;/b&GT;", "bold"),
    ("&amp;lt;script&amp;gt;", "&lt;script&gt;"),  # double-escaped text is decoded exactly once
    ("Tom &amp; Jerry &quot;quoted&quot; &#8212; &hellip;", 'Tom & Jerry "quoted" — …'),
    # nested / broken tags
    ("<scr<script>ipt>alert(1)</script>", "ipt>alert(1)"),
    ("<<script>script>alert(1)<</script>/script>", ""),
    ("<b><i>nested</b></i> tags", "nested tags"),
    ("<p>unclosed <b>bold", "unclosed bold"),
    ("</p>stray closing</div>", "stray closing"),
    ("a < b and c > d", "a < b and c > d"),
    ("x<y", "x"),
    ("<<<<a>>>", "<<<>>"),
    # CDATA, comments, declarations, processing instructions
    ("<![CDATA[<script>alert(1)</script>]]>after cdata", "after cdata"),
    ("keep<!-- <script>alert(1)</script> -->this", "keepthis"),
    ("open <!-- comment never closed", "open"),
    ("<!DOCTYPE html><?xml version='1.0'?><?php evil(); ?>text", "text"),
    # control and invisible characters
    ("<\x00script>alert(1)</script>", ""),  # NUL is dropped first, so this is a real <script>
    ("bit\x00coin\x07\x1b[31m", "bitcoin[31m"),
    ("zero\u200bwidth \u202eevil\u202c bidi", "zerowidth evil bidi"),
    ("line\nbreaks\tand   spaces\r\n", "line breaks and spaces"),
    ("Hello<br>World<p>again</p>", "Hello World again"),
]


@pytest.mark.parametrize(("raw", "expected"), HOSTILE)
def test_hostile_corpus(raw: str, expected: str) -> None:
    out = clean_text(raw, max_len=1000)
    assert out == expected
    assert not MARKUP.search(out)


@pytest.mark.parametrize(("raw", "_"), HOSTILE)
def test_hostile_corpus_as_plain_text_never_yields_markup(raw: str, _: str) -> None:
    assert not MARKUP.search(clean_text(raw, max_len=1000, is_html=False))


def test_plain_text_keeps_entities_verbatim() -> None:
    # A text/plain title containing "&amp;" means the literal characters, not "&".
    assert clean_text("AT&amp;T &lt;b&gt;", max_len=100, is_html=False) == "AT&amp;T &lt;b&gt;"
    assert clean_text("AT&amp;T", max_len=100) == "AT&T"


def test_none_and_empty() -> None:
    assert clean_text(None, max_len=10) == ""
    assert clean_text("", max_len=10) == ""
    assert clean_text("<p> </p>", max_len=10) == ""


def test_length_caps() -> None:
    long = "word " * 500
    title = clean_title(long)
    summary = clean_summary(long * 2)
    assert len(title) <= TITLE_MAX
    assert title.endswith("…")
    assert len(summary) <= SUMMARY_MAX
    assert clean_text("x" * 50, max_len=10) == "xxxxxxxxx…"


def test_huge_input_is_bounded() -> None:
    raw = "<div>" * 50_000 + "text" + "<script>" * 10_000
    out = clean_text(raw, max_len=SUMMARY_MAX)
    assert not MARKUP.search(out)


@given(st.text(max_size=400))
@example("<<script>>")
@example("&lt;<!--")
@example("<\x00a")
@example("&#x3C;&#x3C;a")
@example("<![0")  # html.parser raises on this in Python 3.11; the regex fallback handles it
def test_property_no_markup_for_arbitrary_text(raw: str) -> None:
    for is_html in (True, False):
        out = clean_text(raw, max_len=300, is_html=is_html)
        assert not has_markup(out)
        assert len(out) <= 300
        assert out == out.strip()
        assert "\x00" not in out
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in out)
        out.encode("utf-8")  # storable in PostgreSQL text


_TAGGY = st.lists(
    st.sampled_from(
        ["<", ">", "/", "!", "?", "&", ";", "#", "x3C", "lt", "gt", "amp", "script", "a", "img", "--",
         "[CDATA[", "]]", " ", "=", '"', "'", "onerror", "\x00", "\u200b", "60"]
    ),
    max_size=60,
).map("".join)  # fmt: skip


@given(_TAGGY)
def test_property_no_markup_for_tag_soup(raw: str) -> None:
    assert not has_markup(clean_text(raw, max_len=300))
    assert not has_markup(clean_text(raw, max_len=300, is_html=False))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://www.coindesk.com/markets/x?a=1&b=2", "https://www.coindesk.com/markets/x?a=1&b=2"),
        ("  http://example.com/path  ", "http://example.com/path"),
        ("HTTPS://Example.com/A", "https://Example.com/A"),
        ("https://example.com/a b", "https://example.com/a%20b"),
        ("https://example.com:8443/x", "https://example.com:8443/x"),
        ("javascript:alert(1)", None),
        ("JavaScript:alert(1)", None),
        (" javascript:alert(1)", None),
        ("java\tscript:alert(1)", None),
        ("java\nscript:alert(1)", None),
        ("data:text/html;base64,PHNjcmlwdD4=", None),
        ("vbscript:msgbox(1)", None),
        ("file:///etc/passwd", None),
        ("ftp://example.com/x", None),
        ("mailto:a@example.com", None),
        ("//example.com/protocol-relative", None),
        ("/relative/path", None),
        ("https://trusted.example@evil.example/", None),
        ('https://example.com/"><script>', None),
        ("https:///no-host", None),
        ("http://example.com:99999/", None),
        ("https://exa\x00mple.com/", None),
        ("\x00 https://example.com/ \x00", "https://example.com/"),  # outer C0 is trimmed (WHATWG)
        ("https://example.com/" + "a" * 3000, None),
        ("", None),
        (None, None),
    ],
)
def test_clean_link(raw: str | None, expected: str | None) -> None:
    assert clean_link(raw) == expected


@given(st.text(max_size=200))
def test_property_links_are_http_or_none(raw: str) -> None:
    out = clean_link(raw)
    assert out is None or out.startswith(("http://", "https://"))
    assert out is None or not re.search(r"[\s<>\"']", out)
