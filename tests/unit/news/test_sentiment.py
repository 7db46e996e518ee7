"""Sentiment: VADER compound in [-1, 1], shifted the right way by the crypto lexicon."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from mw_core.news.sentiment import analyzer, rewrite_phrases, score, score_headline

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def plain_vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


NEGATIVE = [
    "Exchange hack drains hot wallet",
    "Lending protocol exploited for $40M",
    "Binance to delist three tokens",
    "Binance announces delisting of privacy coins",
    "$1B in liquidations as bitcoin tumbles",
    "Developers pull off a rug pull on NFT buyers",
    "Crypto lender files for insolvency",
    "SEC lawsuit targets major exchange",
]
POSITIVE = [
    "Spot ETF approval expected this week",
    "Regulator approved the new product",
    "Institutional adoption grows",
    "Altcoins rally into the weekend",
    "Bitcoin sets new all-time high",
    "ETH hits new ATH",
    "Exchange announces partnership with payments giant",
    "Network upgrade goes live",
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_crypto_lexicon_pushes_negative(text: str, plain_vader: SentimentIntensityAnalyzer) -> None:
    assert score(text) < 0
    assert score(text) < plain_vader.polarity_scores(text)["compound"]


@pytest.mark.parametrize("text", POSITIVE)
def test_crypto_lexicon_pushes_positive(text: str, plain_vader: SentimentIntensityAnalyzer) -> None:
    assert score(text) > 0
    assert score(text) >= plain_vader.polarity_scores(text)["compound"]


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("Rug Pull", "rugpull"),
        ("rug-pull", "rugpull"),
        ("SEC  lawsuit", "seclawsuit"),
        ("spot ETF approval", "etfapproval"),
        ("All-Time High", "alltimehigh"),
        ("all time highs", "alltimehigh"),
    ],
)
def test_phrases_become_single_tokens(text: str, token: str) -> None:
    assert rewrite_phrases(text) == token


def test_phrases_need_whole_words() -> None:
    assert rewrite_phrases("drug pulls") == "drug pulls"


def test_negation_still_applies() -> None:
    assert score("The ETF was not approved") < score("The ETF was approved")


def test_neutral_and_empty() -> None:
    assert score("") == 0.0
    assert score("   ") == 0.0
    assert score("Bitcoin price at noon") == 0.0


def test_headline_weights_title_over_summary() -> None:
    title = "Exchange hacked"
    mixed = score_headline(title, "Users are happy, great support, wonderful recovery")
    assert score(title) < mixed < 0  # the summary softens it, the title still dominates
    assert score_headline(title) == score(title)
    assert score_headline(title, "  ") == score(title)


def test_analyzer_is_a_singleton() -> None:
    assert analyzer() is analyzer()
    assert analyzer().lexicon["rugpull"] < 0


@given(st.text(max_size=300))
def test_property_range(text: str) -> None:
    assert -1.0 <= score(text) <= 1.0
    assert -1.0 <= score_headline(text, text[::-1]) <= 1.0
