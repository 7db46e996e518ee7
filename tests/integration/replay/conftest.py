"""The notifier tests' local receivers (signed webhook, Apprise ``json://``), for `mw replay`."""

from __future__ import annotations

from tests.integration.notify.conftest import json_receiver, webhook

__all__ = ["json_receiver", "webhook"]
