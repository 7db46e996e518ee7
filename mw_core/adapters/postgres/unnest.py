"""Column arrays for the repositories' ``unnest($1::t[], $2::t[], ...)`` bulk statements.

Contract:
- `columns(rows, names)` returns one list per attribute name, in the order of `names`: the
  parameters of a statement that unnests one array per column.
- `field_names(cls)` is a dataclass's (or NamedTuple's) field names in declaration order, for tables whose columns
  follow the record's fields one to one (`prices`, `anomalies`, `alert_events`).
- Pure: no I/O, no SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from operator import attrgetter
from typing import Any


def field_names(cls: Any) -> tuple[str, ...]:
    """The field names of dataclass or NamedTuple `cls`, in declaration order."""
    if is_dataclass(cls):
        return tuple(f.name for f in fields(cls))
    return tuple(cls._fields)


def columns(rows: Sequence[Any], names: Iterable[str]) -> list[list[Any]]:
    """One list per attribute in `names` (in that order), each holding that attribute of every row."""
    return [list(map(attrgetter(name), rows)) for name in names]
