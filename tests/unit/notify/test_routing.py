"""`MW_NOTIFY_URLS` parsing: routing prefixes, commas inside URLs, errors without secrets."""

from __future__ import annotations

import pytest

from mw_core.notify.routing import KINDS, Route, RoutingError, describe, parse_channels, split_channels

pytestmark = pytest.mark.unit


def test_plain_urls_and_prefixed_urls() -> None:
    raw = (
        "[symbols=btcusdt|ETHUSDT;kinds=open|escalate;min_move=0.05]slack://T1/B2/tok, "
        "json://127.0.0.1:8000/hook,[kinds=summary]ntfys://ntfy.sh/topic"
    )
    specs = parse_channels(raw)
    assert [s.url for s in specs] == [
        "slack://T1/B2/tok",
        "json://127.0.0.1:8000/hook",
        "ntfys://ntfy.sh/topic",
    ]
    assert specs[0].route == Route(frozenset({"BTCUSDT", "ETHUSDT"}), frozenset({"open", "escalate"}), 0.05)
    assert specs[1].route == Route()
    assert specs[2].route.kinds == frozenset({"summary"})


def test_commas_inside_a_url_do_not_split_it() -> None:
    raw = "mailto://u:pw@mail.example.com?to=a@example.com,b@example.com,tgram://123:tok/chat1,chat2"
    assert split_channels(raw) == [
        "mailto://u:pw@mail.example.com?to=a@example.com,b@example.com",
        "tgram://123:tok/chat1,chat2",
    ]


def test_route_filters() -> None:
    route = Route(frozenset({"BTCUSDT"}), frozenset({"open", "summary"}), 0.05)
    assert route.accepts(symbol="BTCUSDT", kind="open", ret=-0.06)
    assert not route.accepts(symbol="BTCUSDT", kind="open", ret=0.01)
    assert not route.accepts(symbol="ETHUSDT", kind="open", ret=0.1)
    assert not route.accepts(symbol="BTCUSDT", kind="close", ret=0.1)
    assert route.accepts(symbol="BTCUSDT", kind="summary", ret=None)  # follow-ups: no move test
    assert describe(route) == "symbols=BTCUSDT;kinds=open|summary;min_move=0.05"
    assert describe(Route()) == "all" and Route().kinds == KINDS


@pytest.mark.parametrize(
    "raw",
    [
        "[kinds=opened]slack://T1/B2/SECRETTOKEN",
        "[min_move=lots]slack://T1/B2/SECRETTOKEN",
        "[colour=red]slack://T1/B2/SECRETTOKEN",
        "[symbols=BTCUSDT slack://T1/B2/SECRETTOKEN",
        "[symbols]slack://T1/B2/SECRETTOKEN",
    ],
)
def test_errors_name_the_position_never_the_url(raw: str) -> None:
    with pytest.raises(RoutingError) as info:
        parse_channels("json://127.0.0.1/ok," + raw)
    assert "channel 2" in str(info.value)
    assert "SECRETTOKEN" not in str(info.value)


def test_a_channel_without_scheme_is_an_error() -> None:
    with pytest.raises(RoutingError, match="channel 1: not a URL"):
        parse_channels("SECRETTOKEN-no-scheme")


def test_empty() -> None:
    assert parse_channels(None) == [] and parse_channels("  ") == []
