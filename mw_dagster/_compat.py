"""Workarounds for Dagster behaviour we depend on, each with the upstream issue.

`resolve_annotations`: Dagster validates the ``context`` parameter's annotation by identity against
its context classes, reading `inspect.signature` without evaluating strings, so under
``from __future__ import annotations`` (our style) ``context: AssetExecutionContext`` is rejected
(dagster-io/dagster#26837, open in 1.13). Giving the function an explicit, evaluated
``__signature__`` fixes both that check and Dagster's resource type-hint lookup, which honours
``__signature__``. Apply it below the Dagster decorator.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def resolve_annotations(fn: F) -> F:
    """Set ``fn.__signature__`` to its signature with string annotations evaluated."""
    fn.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return fn
