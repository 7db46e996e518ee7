"""Tier 2: the chart assets materialized against the real test PostgreSQL (and the real stream).

The real crash day (2024-08-05, BTC / SOL / ADA) goes through Kafka and the processor; then
`market_overview`, `alert_enrichments` and `market_report` are materialized with `dg.materialize`
and their embedded PNGs are decoded from the markdown metadata: at least 400x200 px, under 300 KB.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from PIL import Image

from mw_core.config import Settings
from mw_dagster.alerts.assets import alert_enrichments
from mw_dagster.markets.overview import market_overview
from mw_dagster.markets.report import market_report
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource
from tests.dagster.helpers import kline_ticks, stream

pytestmark = pytest.mark.integration

CRASH_DAY = "2024-08-05"
CRASH_SYMBOLS = ("BTCUSDT", "SOLUSDT", "ADAUSDT")
IMAGE = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
MAX_BYTES = 300_000


def images(markdown: object) -> list[tuple[str, Image.Image, int]]:
    """(alt text, decoded picture, PNG bytes) of every embedded image; each checked for size."""
    out: list[tuple[str, Image.Image, int]] = []
    for alt, data in IMAGE.findall(str(markdown)):
        png = base64.b64decode(data, validate=True)
        picture = Image.open(io.BytesIO(png))
        picture.load()
        assert picture.format == "PNG"
        assert picture.width >= 400 and picture.height >= 200, (alt, picture.size)
        assert len(png) < MAX_BYTES, (alt, len(png))
        assert len(set(picture.convert("RGB").getdata())) > 20, f"{alt}: blank picture"
        out.append((alt, picture, len(png)))
    return out


def _materialization(result: dg.ExecuteInProcessResult, key: str) -> dg.AssetMaterialization:
    events = result.asset_materializations_for_node(key)
    assert events, f"no materialization of {key}"
    return events[-1]


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict[str, Any]:
    return {k: v.value for k, v in _materialization(result, key).metadata.items()}


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The assets' `Settings` (built from MW_* per run): the crash symbols, a temporary state dir."""
    monkeypatch.setenv("MW_SYMBOLS", ",".join(CRASH_SYMBOLS))
    monkeypatch.setenv("MW_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("MW_CHARTS_PER_RUN", raising=False)
    yield tmp_path / "state"


@pytest.fixture
def crash_day(settings: Settings, postgres: PostgresResource, watched: Path) -> PostgresResource:
    """The real crash day streamed through Kafka and the processor into this test's database."""
    asyncio.run(stream(settings, [t for s in CRASH_SYMBOLS for t in kline_ticks(s)]))
    return postgres


def test_market_overview_of_a_replayed_crash_day(crash_day: PostgresResource) -> None:
    result = dg.materialize([market_overview], resources={"postgres": crash_day})
    mat = _materialization(result, "market_overview")
    meta: dict[str, Any] = {k: v.value for k, v in mat.metadata.items()}
    # The data is a 2024 day: "now" is its newest tick, and the metadata says so.
    assert meta["replayed"] is True and meta["as_of"] == "2024-08-05 23:59:59 UTC"
    assert "replayed" in str(meta["as_of_source"])
    [(alt, picture, _)] = images(meta["chart"])
    assert "normalised to 100" in alt and picture.width >= 800
    assert meta["chart_degraded"] == "" and meta["charts_rendered"] == 1
    table = str(meta["table"])
    for symbol in CRASH_SYMBOLS:
        assert f"| {symbol} |" in table
    assert "| symbol | last price | 1 h | 24 h |" in table
    assert str(meta["top_movers"]).count("USDT") == 3
    assert int(meta["alerts_24h"]) >= 3
    # Plain numbers (not text) so the UI's Plots tab graphs them across materializations.
    assert isinstance(mat.metadata["alerts_per_hour"], dg.IntMetadataValue)
    assert isinstance(mat.metadata["open_episodes"], dg.IntMetadataValue)
    assert isinstance(mat.metadata["tick_rate"], dg.FloatMetadataValue)
    assert float(meta["tick_rate"]) > 0


def test_alert_enrichments_chart_every_alerted_symbol(crash_day: PostgresResource) -> None:
    resources = {"postgres": crash_day, "kafka": KafkaResource(), "llm": LLMResource()}
    meta = _meta(dg.materialize([alert_enrichments], resources=resources), "alert_enrichments")
    stored = int(meta["stored"])
    assert stored >= 3 and meta["charts_of"] == "alerts enriched by this run"
    charts = images(meta["charts"])
    assert len(charts) == meta["charts_rendered"] == min(stored, 20)
    assert meta["charted_symbols"] == sorted(CRASH_SYMBOLS)
    # One chart per alerted symbol comes first, whatever the cap.
    assert {alt.split()[0] for alt, _, _ in charts[:3]} == set(CRASH_SYMBOLS)
    assert float(meta["chart_kb_max"]) < MAX_BYTES / 1024
    assert int(meta["chart_width_min"]) >= 400 and int(meta["chart_height_min"]) >= 200

    # Nothing new to enrich (the sensor was first): the latest alerts are charted again.
    again = _meta(dg.materialize([alert_enrichments], resources=resources), "alert_enrichments")
    assert again["stored"] == 0 and again["charts_of"] == "latest alerts (this run enriched none)"
    assert {alt.split()[0] for alt, _, _ in images(again["charts"])[:3]} == set(CRASH_SYMBOLS)


def test_alert_charts_stop_at_the_cap_with_a_reason(
    crash_day: PostgresResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MW_CHARTS_PER_RUN", "2")
    resources = {"postgres": crash_day, "kafka": KafkaResource(), "llm": LLMResource()}
    meta = _meta(dg.materialize([alert_enrichments], resources=resources), "alert_enrichments")
    assert len(images(meta["charts"])) == meta["charts_rendered"] == 2
    assert meta["charts_not_rendered"] == int(meta["stored"]) - 2
    assert "per-run cap of 2 charts" in str(meta["charts"])


def test_market_report_of_the_crash_day(crash_day: PostgresResource, watched: Path) -> None:
    result = dg.materialize([market_report], resources={"postgres": crash_day}, partition_key=CRASH_DAY)
    meta = _meta(result, "market_report")
    charts = images(meta["charts"])
    assert [alt.split()[0] for alt, _, _ in charts] == list(CRASH_SYMBOLS)
    assert int(meta["episodes"]) >= 3 and meta["day"] == CRASH_DAY
    path = Path(str(meta["report_path"]))
    assert path == watched.resolve() / "reports" / f"market-report-{CRASH_DAY}.html"
    html = path.read_text()
    assert html.count('<img src="data:image/png;base64,') == 3 and "<script" not in html
    assert "BTCUSDT" in html and "escalate" in html


def test_chart_assets_on_an_empty_database_do_not_crash(postgres: PostgresResource, watched: Path) -> None:
    """No data at all: text-only charts with their reason, never a failed run."""
    overview = _meta(dg.materialize([market_overview], resources={"postgres": postgres}), "market_overview")
    assert overview["replayed"] is False and overview["chart_degraded"] == "no data in window"
    assert len(images(overview["chart"])) == 1
    assert "| BTCUSDT | — |" in str(overview["table"])
    assert overview["alerts_per_hour"] == 0 and overview["open_episodes"] == 0
    report = _meta(
        dg.materialize([market_report], resources={"postgres": postgres}, partition_key=CRASH_DAY),
        "market_report",
    )
    assert len(images(report["charts"])) == 3 and report["episodes"] == 0
    assert set(report["degraded_charts"]) == set(CRASH_SYMBOLS)
    resources = {"postgres": postgres, "kafka": KafkaResource(), "llm": LLMResource()}
    enriched = _meta(dg.materialize([alert_enrichments], resources=resources), "alert_enrichments")
    assert enriched["charts"] == "_no alert to chart_" and enriched["charts_rendered"] == 0
