"""Pure notification content: decode `alerts` records, render messages that stay inert.

Contract:
- `decode_alert(value)` turns one `alerts` record into an `Alert`: ``"type": "episode"``
  (``open`` / ``escalate`` / ``close``, `mw_core.markets.codec.encode_event`) or
  ``"type": "enrichment"`` (the LLM follow-up of ``(episode_id, seq)``, kind ``summary`` here).
  Other types return None (not ours); a malformed record raises `BadAlert` with a short reason.
- `Alert.key` identifies the event (``<episode_id>/<seq>``, ``<episode_id>/<seq>/summary`` for a
  follow-up): with the channel id it forms the delivery key (`idempotency_key`).
- `render(alert, fmt, dagster_url=...)` -> ``(title, body)`` for one target format:
  ``text`` (plain), ``markdown`` (CommonMark, which Apprise translates for each chat service:
  Slack mrkdwn, Telegram MarkdownV2, Discord markdown) or ``html`` (email). The title is built
  only from validated fields (symbol, numbers, fixed words) so it needs no escaping anywhere.
- Free text (a closing summary, an LLM summary) goes through `inert()` first, whatever the target:
  control, format and bidi characters removed, whitespace collapsed to one line (no markdown
  block can start), mass mentions broken (``@everyone`` -> ``@\\u200beveryone``, ``<!channel>``
  -> ``<!\\u200bchannel>``), URLs and domain names defanged (``https[:]//evil[.]com``) so no
  client links them, length capped. Then the target's escaping makes every markup character
  literal: every ASCII punctuation mark backslash-escaped for CommonMark (Apprise's converters
  keep or re-encode those escapes per service), HTML entities for ``html``.
- The only link a message carries is ours: the Dagster UI (`Settings.public_dagster_url`).
"""

from __future__ import annotations

import html
import math
import re
import string
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from mw_core.models import ms_to_dt

Format = Literal["text", "markdown", "html"]
EPISODE_KINDS = frozenset({"open", "escalate", "close"})
SUMMARY_MAX = 1200
_EPISODE_ID = re.compile(r"^[A-Z0-9]{2,20}-\d{1,16}$")
_SYMBOL = re.compile(r"^[A-Z0-9]{2,20}$")
# Categories removed from free text: controls, format chars (zero-width, bidi overrides), private
# use, surrogates, line/paragraph separators. Telegram and Slack treat several of them specially.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
_WS = re.compile(r"\s+")
_ZWSP = "\u200b"
_MENTION = re.compile(r"([@!])(?=[A-Za-z0-9&#])")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):/+")
_DOMAIN_DOT = re.compile(r"(?<=[A-Za-z0-9-])\.(?=[A-Za-z]{2,}\b)")
_MD_PUNCT = re.compile("([" + re.escape(string.punctuation) + "])")


class BadAlert(ValueError):
    """An `alerts` record the notifier cannot use; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Alert:
    """One event to deliver: an episode event, or the LLM follow-up of one (kind ``summary``)."""

    kind: str  # open / escalate / close / summary
    episode_id: str
    seq: int
    symbol: str
    ts: int
    summary: str
    raw: bytes  # the record value: the webhook's body
    window_s: int | None = None
    ret: float | None = None
    direction: str | None = None
    price: float | None = None
    event_kind: str | None = None  # for a follow-up: the kind of the event it enriches

    @property
    def event_key(self) -> str:
        """``<episode_id>/<seq>``: the episode event this alert is or enriches."""
        return f"{self.episode_id}/{self.seq}"

    @property
    def key(self) -> str:
        return self.event_key + ("/summary" if self.kind == "summary" else "")


def _require(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is None:
        raise BadAlert("missing_field", name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise BadAlert("bad_field", f"{name} of type {type(value).__name__}")
    return value


def _number(body: dict[str, Any], name: str) -> float:
    value = float(_require(body, name, (int, float)))
    if not math.isfinite(value):
        raise BadAlert("bad_field", f"{name} is not finite")
    return value


def decode_alert(value: bytes | None) -> Alert | None:
    """Decode one `alerts` record; None for record types the notifier does not handle."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise BadAlert("malformed_json") from None
    if not isinstance(body, dict):
        raise BadAlert("not_an_object", type(body).__name__)
    kind_of_record = body.get("type")
    if kind_of_record not in ("episode", "enrichment"):
        return None
    episode = str(_require(body, "episode_id", str))
    symbol = str(_require(body, "symbol", str))
    if not _EPISODE_ID.match(episode) or not _SYMBOL.match(symbol):
        raise BadAlert("bad_field", "episode_id or symbol")
    seq = int(_require(body, "seq", int))
    ts = int(_require(body, "ts", int))
    if seq < 1 or ts < 0:
        raise BadAlert("bad_field", "seq or ts out of range")
    summary = body.get("summary") or ""
    if not isinstance(summary, str):
        raise BadAlert("bad_field", "summary")
    kind = _require(body, "kind", str)
    if kind not in EPISODE_KINDS:
        raise BadAlert("bad_field", "kind")
    raw = bytes(value or b"")
    if kind_of_record == "enrichment":
        return Alert("summary", episode, seq, symbol, ts, summary, raw, event_kind=kind)
    direction = _require(body, "direction", str)
    if direction not in ("up", "down"):
        raise BadAlert("bad_field", "direction")
    price = _number(body, "price")
    window_s = int(_require(body, "window_s", int))
    return Alert(
        kind, episode, seq, symbol, ts, summary, raw, window_s, _number(body, "ret"), direction, price
    )


# --- free text -------------------------------------------------------------------------------
def inert(text: str, *, limit: int = SUMMARY_MAX) -> str:
    """Free text made harmless for every target before its own escaping (see module docstring)."""
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in _DROP_CATEGORIES)
    kept = _WS.sub(" ", kept).strip()
    if len(kept) > limit:
        kept = kept[: limit - 1].rstrip() + "…"
    kept = _SCHEME.sub(r"\1[:]//", kept)
    kept = _DOMAIN_DOT.sub("[.]", kept)
    return _MENTION.sub(lambda m: m.group(1) + _ZWSP, kept)


def escape(text: str, fmt: Format) -> str:
    """Make every markup character of `text` literal in `fmt`."""
    if fmt == "markdown":
        return _MD_PUNCT.sub(r"\\\1", text)
    if fmt == "html":
        return html.escape(text, quote=True)
    return text


def free_text(text: str, fmt: Format) -> str:
    """`inert` then `escape`: the only way untrusted text enters a message."""
    return escape(inert(text), fmt)


# --- rendering ---------------------------------------------------------------------------------
STAGES = {"open": "opened", "escalate": "escalated", "close": "closed", "summary": "summary"}


def window_text(window_s: int) -> str:
    return f"{window_s // 60} min" if window_s % 60 == 0 else f"{window_s} s"


def utc_text(ts: int) -> str:
    return ms_to_dt(ts).strftime("%Y-%m-%d %H:%M:%S UTC")


def title(alert: Alert) -> str:
    """Plain one-line title from validated fields only (safe in every target as is)."""
    if alert.kind == "summary":
        return f"{alert.symbol}: summary of alert #{alert.seq} ({alert.event_kind})"
    arrow = "▲" if alert.direction == "up" else "▼"
    move = f"{(alert.ret or 0.0) * 100:+.2f}%"
    return (
        f"{alert.symbol} {arrow} {move} in {window_text(alert.window_s or 0)}: episode {STAGES[alert.kind]}"
    )


def _strong(text: str, fmt: Format) -> str:
    if fmt == "markdown":
        return f"**{escape(text, fmt)}**"
    if fmt == "html":
        return f"<b>{escape(text, fmt)}</b>"
    return text


def _link(url: str, label: str, fmt: Format) -> str:
    if fmt == "markdown":
        return f"[{escape(label, fmt)}](<{url.replace('>', '%3E').replace(' ', '%20')}>)"
    if fmt == "html":
        return f'<a href="{html.escape(url, quote=True)}">{html.escape(label)}</a>'
    return f"{label}: {url}"


def lines(alert: Alert, fmt: Format, *, dagster_url: str | None = None) -> list[str]:
    """The message body as lines (joined by `render`)."""
    e = escape
    out: list[str] = []
    if alert.kind == "summary":
        out.append(f"{_strong(alert.symbol, fmt)} {e(f'alert #{alert.seq} ({alert.event_kind})', fmt)}")
        out.append(free_text(alert.summary, fmt))
        out.append(e(f"Time: {utc_text(alert.ts)}", fmt))
    else:
        verb = "rose" if alert.direction == "up" else "fell"
        move = f"{abs(alert.ret or 0.0) * 100:.2f}%"
        out.append(
            f"{_strong(alert.symbol, fmt)} {e(verb, fmt)} {_strong(move, fmt)} "
            f"{e(f'in {window_text(alert.window_s or 0)} to {alert.price:,.8g}', fmt)}"
        )
        out.append(e(f"Time: {utc_text(alert.ts)}", fmt))
        stage = f"Stage: episode {STAGES[alert.kind]} (#{alert.seq}, {alert.episode_id})"
        out.append(e(stage, fmt))
        if alert.kind == "close" and alert.summary:
            out.append(e("Summary: ", fmt) + free_text(alert.summary, fmt))
    if dagster_url:
        out.append(_link(dagster_url, "Open in Dagster", fmt))
    return out


def render(alert: Alert, fmt: Format, *, dagster_url: str | None = None) -> tuple[str, str]:
    """``(title, body)`` of `alert` for target format `fmt`."""
    sep = "<br/>\n" if fmt == "html" else "\n\n" if fmt == "markdown" else "\n"
    return title(alert), sep.join(lines(alert, fmt, dagster_url=dagster_url))


def sample_alert(*, now_ms: int) -> Alert:
    """The synthetic alert `mw notify test` sends (a recognisable, harmless event)."""
    body = {
        "type": "episode",
        "kind": "open",
        "episode_id": f"MWTEST-{now_ms}",
        "seq": 1,
        "symbol": "MWTEST",
        "ts": now_ms,
        "window_s": 60,
        "ret": 0.0123,
        "direction": "up",
        "price": 1.0,
        "summary": "Market Watch test notification.",
        "test": True,
    }
    alert = decode_alert(orjson.dumps(body))
    if alert is None:  # pragma: no cover - the body above is an episode record
        raise BadAlert("not_an_episode")
    return alert
