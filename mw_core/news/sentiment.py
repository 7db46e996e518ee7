"""Pure headline sentiment: VADER compound score with a small crypto lexicon.

Contract:
- `score(text)` is VADER's compound score in [-1, 1] (0.0 for empty text), after the crypto
  lexicon update below. VADER scores single tokens, so multi-word phrases ("rug pull", "SEC
  lawsuit", "all-time high", "ETF approval") are first rewritten into single lexicon tokens.
- `score_headline(title, summary)` weights the title over the summary: headlines are what
  traders read, and long summaries would otherwise dominate VADER's length normalisation.
- The analyzer is built once per process (lazy module-level singleton) because loading the
  VADER lexicon takes tens of milliseconds.

No I/O beyond VADER reading its bundled lexicon file on first use.
"""

from __future__ import annotations

import re
import threading

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

# Valences on VADER's -4..+4 scale (VADER's own "hacked" is -1.7, "bankrupt" -2.6, "fraud" -2.8).
CRYPTO_LEXICON: dict[str, float] = {
    # negative
    "hack": -2.0,
    "hacked": -2.5,
    "hacker": -1.8,
    "hackers": -1.8,
    "exploit": -2.0,
    "exploited": -2.3,
    "exploits": -2.0,
    "delist": -2.0,
    "delists": -2.0,
    "delisted": -2.0,
    "delisting": -2.0,
    "liquidation": -1.8,
    "liquidations": -1.8,
    "liquidated": -1.8,
    "insolvency": -2.8,
    "insolvent": -2.8,
    "bankrupt": -2.8,
    "bankruptcy": -2.8,
    "rugpull": -3.0,
    "seclawsuit": -2.5,
    "bearish": -1.5,
    "plunge": -1.8,
    "plunges": -1.8,
    "plunged": -1.8,
    "slump": -1.5,
    "slumps": -1.5,
    # positive
    "etfapproval": 2.8,
    "approved": 2.0,
    "adoption": 1.8,
    "rally": 2.0,
    "rallies": 2.0,
    "rallied": 2.0,
    "alltimehigh": 2.5,
    "ath": 2.2,
    "partnership": 1.6,
    "partnerships": 1.6,
    "upgrade": 1.5,
    "upgrades": 1.5,
    "upgraded": 1.5,
    "bullish": 1.5,
    "surge": 1.8,
    "surges": 1.8,
    "surged": 1.8,
    "soar": 2.0,
    "soars": 2.0,
    "soared": 2.0,
}

# Phrase -> single token present in CRYPTO_LEXICON. Case-insensitive, any whitespace or hyphen
# between the words, whole words only.
_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), token)
    for pattern, token in (
        (r"\brug[\s-]*pull(?:s|ed)?\b", "rugpull"),
        (r"\bSEC(?:'s)?[\s-]+(?:lawsuit|suit|sues|sued)\b", "seclawsuit"),
        (r"\b(?:spot[\s-]+)?ETFs?[\s-]+approvals?\b", "etfapproval"),
        (r"\ball[\s-]+time[\s-]+highs?\b", "alltimehigh"),
        (r"\brecord[\s-]+highs?\b", "alltimehigh"),
    )
)

_lock = threading.Lock()
_analyzer: SentimentIntensityAnalyzer | None = None

SUMMARY_WEIGHT = 0.3
SUMMARY_CHARS = 500


def analyzer() -> SentimentIntensityAnalyzer:
    """The process-wide VADER analyzer with `CRYPTO_LEXICON` applied (built on first use)."""
    global _analyzer
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                built = SentimentIntensityAnalyzer()
                built.lexicon.update(CRYPTO_LEXICON)
                _analyzer = built
    return _analyzer


def rewrite_phrases(text: str) -> str:
    """Replace known multi-word phrases by their single lexicon token ("rug pull" -> "rugpull")."""
    for pattern, token in _PHRASES:
        text = pattern.sub(token, text)
    return text


def score(text: str) -> float:
    """VADER compound score of `text` in [-1, 1], crypto lexicon included.

    Example:
        >>> score("Exchange hacked, funds drained") < 0 < score("Bitcoin ETF approval sparks rally")
        True
    """
    if not text or not text.strip():
        return 0.0
    compound = float(analyzer().polarity_scores(rewrite_phrases(text))["compound"])
    return max(-1.0, min(1.0, compound))


def score_headline(title: str, summary: str = "") -> float:
    """Sentiment of one headline: the title's score, blended 70/30 with the summary's when present."""
    title_score = score(title)
    summary = summary[:SUMMARY_CHARS]
    if not summary.strip():
        return title_score
    blended = (1 - SUMMARY_WEIGHT) * title_score + SUMMARY_WEIGHT * score(summary)
    return max(-1.0, min(1.0, blended))
