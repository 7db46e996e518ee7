"""Message content: decoding, rendering, and hostile text arriving inert in every target.

Inertness is checked on the wire dialect: our CommonMark goes through Apprise's own converters
(Slack mrkdwn, Telegram MarkdownV2, Discord), HTML is parsed back, plain text is inspected.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from html.parser import HTMLParser

import apprise
import orjson
import pytest
from apprise import NotifyFormat
from hypothesis import given
from hypothesis import strategies as st

from mw_core.notify.channels import WebhookChannel, idempotency_key, native_format, sign
from mw_core.notify.messages import BadAlert, decode_alert, inert, render

pytestmark = pytest.mark.unit

HOSTILE = (
    "@everyone @here @channel <!channel> <!here|here> <@U123> <@&987> [click](http://evil.example/x) "
    "**bold** `code` <script>alert(1)</script> <a href='http://evil.example'>x</a> \u202egnp.exe "
    "\u0000\u0007\u200b\u2066 _it_ ~s~ > quote\n# heading\n- item www.evil.com ||spoiler|| "
    "tg://resolve?domain=x javascript:alert(1) \\*escaped\\*"
)


def event(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "type": "episode",
        "kind": "close",
        "episode_id": "BTCUSDT-1722820079999",
        "seq": 3,
        "symbol": "BTCUSDT",
        "ts": 1722820079999,
        "window_s": 300,
        "ret": -0.0512,
        "direction": "down",
        "price": 58000.5,
        "summary": HOSTILE,
    }
    body.update(overrides)
    return orjson.dumps(body)


def test_decode_episode_and_enrichment_and_others() -> None:
    alert = decode_alert(event(kind="open", summary=""))
    assert alert is not None and alert.kind == "open" and alert.ret == -0.0512
    assert alert.key == "BTCUSDT-1722820079999/3"
    follow = decode_alert(
        orjson.dumps(
            {
                "type": "enrichment",
                "episode_id": "BTCUSDT-1722820079999",
                "seq": 3,
                "symbol": "BTCUSDT",
                "kind": "open",
                "ts": 1722820079999,
                "summary": "news",
                "model": "m",
                "is_template": False,
            }
        )
    )
    assert follow is not None and follow.kind == "summary" and follow.event_kind == "open"
    assert follow.key == "BTCUSDT-1722820079999/3/summary" and follow.ret is None
    assert decode_alert(b'{"type": "something-else"}') is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "malformed_json"),
        (b"[1]", "not_an_object"),
        (event(seq=None), "missing_field"),
        (event(seq="1"), "bad_field"),
        (event(kind="explode"), "bad_field"),
        (event(episode_id="x"), "bad_field"),
        (event(direction="sideways"), "bad_field"),
        (event(price=True), "bad_field"),
    ],
)
def test_malformed_records_have_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(BadAlert) as info:
        decode_alert(value)
    assert info.value.reason == reason


def test_message_states_the_facts() -> None:
    alert = decode_alert(event(kind="open", summary=""))
    assert alert is not None
    title, body = render(alert, "text", dagster_url="https://dagster.example.com")
    assert title == "BTCUSDT ▼ -5.12% in 5 min: episode opened"
    assert "BTCUSDT fell 5.12% in 5 min to 58,000.5" in body
    assert "2024-08-05 01:07:59 UTC" in body and "episode opened (#1" not in body  # seq 3
    assert "Open in Dagster: https://dagster.example.com" in body
    _, md = render(alert, "markdown", dagster_url="https://dagster.example.com")
    assert "[Open in Dagster](<https://dagster.example.com>)" in md
    close = decode_alert(event(summary="peak -6.1% over 42 min"))
    assert close is not None
    assert "Summary: peak -6.1% over 42 min" in render(close, "text")[1]


# A mention needs its marker and name adjacent: ``@everyone``, ``<!channel>``, ``<@U123>``.
MENTION = re.compile(r"[@!](everyone|here|channel)\b|<[@!][^\u200b]", re.I)


def summary_line(body: str) -> str:
    return next(line for line in body.splitlines() if "Summary" in line)


def assert_inert_text(text: str) -> None:
    assert not MENTION.search(text), text
    assert "://" not in text and "www.evil.com" not in text
    assert not any(ch in text for ch in "\u0000\u0007\u202e\u2066")


def wire(url: str, md: str) -> str:
    plugin = apprise.Apprise.instantiate(url)
    assert plugin is not None and native_format(plugin) == "markdown"
    return str(plugin.dialect_convert(md, NotifyFormat.MARKDOWN))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_hostile_summary_is_inert_in_every_target() -> None:
    alert = decode_alert(event())
    assert alert is not None
    _, text = render(alert, "text")
    assert_inert_text(summary_line(text))
    _, md = render(alert, "markdown")
    line = summary_line(md)
    # CommonMark: every ASCII punctuation mark of the free text is backslash-escaped.
    assert re.search(r"(?<!\\)[*_`\[\]<>#~|]", line.replace("Summary\\:", "")) is None
    slack = summary_line(wire("slack://T1234567/B1234567/abcdefghijklmnopqrstuvwx", md))
    # Slack links are only ``<url|label>``: no raw ``<`` may reach it ([x](y) is not a Slack link).
    assert "<" not in slack and not MENTION.search(slack) and "://" not in slack
    telegram = summary_line(wire("tgram://123456789:abcdefghijklmnopqrstuvwxyzABCDEFGHI/12345?mdv=v2", md))
    # MarkdownV2: every reserved character is escaped.
    assert re.search(r"(?<!\\)[_*\[\]()~`>#+\-=|{}.!]", telegram) is None, telegram
    discord = summary_line(wire("discord://1234567890/abcdefghijkl", md))
    assert not MENTION.search(discord.replace("\\", ""))
    assert re.search(r"(?<!\\)[*_`\[\]~|]", discord) is None
    _, html_body = render(alert, "html", dagster_url="https://dagster.example.com")
    parser = _Tags()
    parser.feed(html_body)
    assert set(parser.tags) <= {"b", "br", "a"} and parser.tags.count("a") == 1  # only our link
    assert_inert_text(summary_line("".join(parser.text)))


@given(st.text(max_size=300))
def test_inert_never_leaves_mentions_links_or_controls(text: str) -> None:
    out = inert(text)
    assert not re.search(r"[@!](everyone|here|channel)", out, re.I)
    assert "://" not in out
    assert "\n" not in out and all(ch >= " " for ch in out)


@given(st.text(min_size=1, max_size=200).filter(str.strip))
def test_markdown_escaping_leaves_no_bare_punctuation(text: str) -> None:
    alert = decode_alert(event(summary=text))
    assert alert is not None
    line = summary_line(render(alert, "markdown")[1])
    free = line.removeprefix("Summary\\: ")
    assert re.search(r"(?<!\\)[*_`\[\]<>#~|()!]", free.replace("\\\\", "")) is None


def test_signature_and_idempotency_key() -> None:
    body = event()
    assert sign(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    alert = decode_alert(body)
    assert alert is not None
    assert idempotency_key(alert, "abc123") == "BTCUSDT-1722820079999/3@abc123"
    hook = WebhookChannel("https://user:pw@hooks.example.com/in?token=SECRET", "s", position=1)
    assert hook.name == "webhook https://hooks.example.com/***"  # a path may carry a token
    headers = hook.headers(body, "K")
    assert headers["X-MW-Signature"] == sign(body, "s") and headers["Idempotency-Key"] == "K"
