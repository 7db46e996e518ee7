"""Source banners of `mw up` / `mw status`: the news feeds' reachability, against real sockets."""

from __future__ import annotations

import socket

import pytest

from mw_core.local.banners import feed_banner
from mw_core.local.ports import free_port

pytestmark = pytest.mark.unit


def test_feed_banner_reports_reachable_and_unreachable_feeds() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = f"http://127.0.0.1:{listener.getsockname()[1]}/rss"
        down = f"http://127.0.0.1:{free_port()}/feed"
        assert feed_banner([up]) == ["news feeds: 1 reachable"]
        (banner,) = feed_banner([up, down])
    assert banner.startswith("news feeds: 1 of 2 unreachable (first: 127.0.0.1)")
    assert "offline?" in banner
    assert feed_banner([]) == []
