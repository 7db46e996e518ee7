"""PostgreSQL URL shapes the local platform converts between.

One server URL serves several databases (``marketwatch`` for the services, ``dagster`` for
Dagster's storage), and Dagster's storage wants a SQLAlchemy URL (``postgresql+psycopg2://``)
where asyncpg wants a libpq one. Query strings (``sslmode=...``) are kept.
"""

from __future__ import annotations


def with_database(url: str, database: str) -> str:
    """`url` with its database name replaced (query string kept)."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}" + (f"?{query}" if query else "")


def database_name(url: str) -> str:
    """The database a URL names."""
    return url.partition("?")[0].rpartition("/")[2]


def sqlalchemy_url(url: str) -> str:
    """A libpq URL as SQLAlchemy/psycopg2 wants it (``postgresql+psycopg2://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg2://``) as libpq/asyncpg wants it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else url
