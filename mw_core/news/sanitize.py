"""Pure text and link sanitising for feed content (titles, summaries, links).

Contract:
- `clean_text` turns untrusted feed text (HTML or plain) into plain text: every tag is removed,
  the *contents* of script-like elements (`script`, `style`, `iframe`, ...) are dropped, comments /
  CDATA / declarations vanish, entities are unescaped exactly once (HTML input only), control and
  invisible formatting characters are removed, whitespace is collapsed and the result is capped.
- Guarantee (checked by property tests): the output never contains ``<`` followed by an ASCII
  letter, ``/``, ``!`` or ``?`` -- i.e. nothing a browser could parse as markup -- even when
  escaped markup such as ``&lt;script&gt;`` is decoded by the single unescape.
- `clean_link` keeps only absolute ``http``/``https`` URLs with a host and no user-info;
  ``javascript:``, ``data:``, ``vbscript:``, relative and anything else become ``None``.

No I/O; stdlib only.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

TITLE_MAX = 300
SUMMARY_MAX = 1000
LINK_MAX = 2048
# Raw input beyond this is ignored before parsing: we keep at most SUMMARY_MAX characters of text,
# and an attacker-sized description must not cost unbounded parse time.
RAW_MAX = 200_000
ELLIPSIS = "…"

# Elements whose content is never text a reader should see.
_SKIP_CONTENT = frozenset(
    {"script", "style", "iframe", "noscript", "noembed", "noframes", "object", "embed",
     "template", "svg", "math", "applet", "frameset", "xmp", "plaintext", "head"}
)  # fmt: skip
# Elements that separate words when rendered; replaced by a space so "a<br>b" becomes "a b".
_BREAKING = frozenset(
    {"br", "p", "div", "li", "ul", "ol", "tr", "td", "th", "table", "h1", "h2", "h3", "h4", "h5",
     "h6", "hr", "img", "blockquote", "pre", "section", "article", "header", "footer", "dd", "dt",
     "dl", "figure", "figcaption", "aside", "nav", "main", "caption", "tbody", "thead", "tfoot"}
)  # fmt: skip

# C0/C1 controls (except whitespace, which is collapsed later), surrogates, non-characters,
# bidi overrides, zero-width and other invisible format characters (ZWJ kept for emoji), tag chars.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b\u200c\u200e\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ufffe\uffff\ud800-\udfff\U000e0000-\U000e007f]"
)
_MARKUP = re.compile(r"<[A-Za-z/!?]")
# A tag left open at the very end of the text ("...<img src=x onerror=alert(1)").
_UNTERMINATED_TAG = re.compile(r"<[A-Za-z/!?][^<>]*\Z")
# A maximal run of '<' before a tag-start character: removing the whole run cannot create a new
# '<'+letter pair, so one substitution pass is enough.
_TAG_OPEN_RUN = re.compile(r"<+(?=[A-Za-z/!?])")
_WHITESPACE = re.compile(r"\s+")
# Stand-in for '&' while re-parsing already-unescaped text, so entities are decoded exactly once.
# NUL cannot survive `_INVISIBLE`, and html.unescape maps "&#0;" to U+FFFD, never to NUL.
_AMP_GUARD = "\x00"
_MAX_RECHECKS = 3


class _TextExtractor(HTMLParser):
    """Collects text nodes, dropping tags, comments, declarations and script-like contents."""

    def __init__(self, *, convert_charrefs: bool) -> None:
        super().__init__(convert_charrefs=convert_charrefs)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_CONTENT:
            self._skip_depth += 1
        elif tag in _BREAKING:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BREAKING:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_CONTENT:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BREAKING:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)

    # Comments, <!DOCTYPE>, <![CDATA[...]]>, <?pi?>: dropped (the default handlers do nothing).


_SKIP_BLOCK = re.compile(
    r"<(" + "|".join(sorted(_SKIP_CONTENT)) + r")\b[^>]*>.*?(?:</\1\s*>|\Z)", re.IGNORECASE | re.DOTALL
)
_COMMENT_OR_CDATA = re.compile(r"<!--.*?(?:-->|\Z)|<!\[CDATA\[.*?(?:\]\]>|\Z)", re.DOTALL)
_ANY_TAG = re.compile(r"<[^>]*(?:>|\Z)")


def _strip_tags_regex(text: str, *, unescape: bool) -> str:
    """Fallback for input that makes `html.parser` raise (e.g. ``"<![0"`` on some Pythons)."""
    text = _SKIP_BLOCK.sub(" ", text)
    text = _COMMENT_OR_CDATA.sub("", text)
    text = _ANY_TAG.sub(" ", text)
    return html.unescape(text) if unescape else text


def _strip_tags(text: str, *, unescape: bool) -> str:
    parser = _TextExtractor(convert_charrefs=unescape)
    try:
        parser.feed(text)
        parser.close()
    except Exception:  # html.parser asserts on some malformed declarations; the regex path is total
        return _strip_tags_regex(text, unescape=unescape)
    return "".join(parser.parts)


def _strip_tags_no_unescape(text: str) -> str:
    return _strip_tags(text.replace("&", _AMP_GUARD), unescape=True).replace(_AMP_GUARD, "&")


def has_markup(text: str) -> bool:
    """True when `text` contains ``<`` followed by a letter, ``/``, ``!`` or ``?``."""
    return _MARKUP.search(text) is not None


def _truncate(text: str, max_len: int) -> str:
    if len(text) <= max_len:
        return text
    cut = text[: max_len - len(ELLIPSIS)]
    space = cut.rfind(" ")
    if space >= max_len * 0.8:  # prefer a word boundary when it costs little
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS


def clean_text(raw: str | None, *, max_len: int, is_html: bool = True) -> str:
    """Plain, single-line, length-capped text from untrusted feed content.

    Args:
        raw: The feed value (``None`` gives ``""``).
        max_len: Maximum length of the result in characters (an ellipsis marks a cut).
        is_html: Whether `raw` is HTML (entities are then unescaped once). Plain text is
            still stripped of anything tag-like but its ``&...;`` sequences are kept verbatim.

    Returns:
        The cleaned text; never contains markup (see module contract).

    Example:
        >>> clean_text("<p>BTC &amp; ETH <script>alert(1)</script>rally</p>", max_len=300)
        'BTC & ETH rally'
    """
    if not raw:
        return ""
    text = _INVISIBLE.sub("", raw[:RAW_MAX])
    text = _strip_tags(text, unescape=True) if is_html else _strip_tags_no_unescape(text)
    # Unescaping may have revealed markup ("&lt;script&gt;"): strip again, never unescaping twice.
    for _ in range(_MAX_RECHECKS):
        if not has_markup(text):
            break
        text = _strip_tags_no_unescape(text)
    # Last line of defence against whatever the parser passed through as text.
    text = _UNTERMINATED_TAG.sub("", text)
    text = _TAG_OPEN_RUN.sub("", text)
    text = _WHITESPACE.sub(" ", text).strip()
    return _truncate(text, max_len)


def clean_title(raw: str | None, *, is_html: bool = True) -> str:
    """`clean_text` capped at `TITLE_MAX` characters."""
    return clean_text(raw, max_len=TITLE_MAX, is_html=is_html)


def clean_summary(raw: str | None, *, is_html: bool = True) -> str:
    """`clean_text` capped at `SUMMARY_MAX` characters."""
    return clean_text(raw, max_len=SUMMARY_MAX, is_html=is_html)


_URL_TAB_NEWLINE = re.compile("[\t\n\r]")
_URL_FORBIDDEN = re.compile("[\x00-\x20\x7f-\x9f<>\"'`\\\\{}|^\u2028\u2029]")


def clean_link(raw: str | None) -> str | None:
    """An absolute ``http(s)`` URL, or ``None`` for anything else.

    Browsers ignore tabs and newlines inside URLs (``java\\tscript:``), so those are removed
    before the scheme check; inner spaces are percent-encoded; quotes, angle brackets, controls,
    user-info (``https://trusted@evil``) and over-long URLs are rejected.

    Example:
        >>> clean_link(" https://example.com/a?b=1 "), clean_link("javascript:alert(1)")
        ('https://example.com/a?b=1', None)
    """
    if not raw:
        return None
    url = _URL_TAB_NEWLINE.sub("", raw).strip(" \x0b\x0c\x00").replace(" ", "%20")
    if not url or len(url) > LINK_MAX or _URL_FORBIDDEN.search(url) or _INVISIBLE.search(url):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    return scheme + url[len(parts.scheme) :]
