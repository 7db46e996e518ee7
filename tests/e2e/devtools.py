"""Headless Chromium driven over the DevTools protocol, for pages that need clicks and live state.

`--dump-dom` / `--screenshot` (`helpers.Chromium`) see a page as loaded; checking that an image
really decoded (``naturalWidth``) or opening a dialog needs the running page. `DevToolsPage`
starts one Chromium (``--remote-debugging-port=0``: Chromium picks a free port and writes it to
``DevToolsActivePort`` in the profile), connects to its page over the protocol's websocket, and
offers navigate / evaluate / wait / click / screenshot. Leaving the context ends exactly that
Chromium (its process group).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

# A quiet headless Chromium: no GPU, no sandbox (containers), no background traffic or updates.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


class DevToolsError(RuntimeError):
    """The browser answered a command with an error, or a page expression threw."""


class DevToolsPage:
    """One headless Chromium with one page (see module docstring)."""

    def __init__(self, binary: str, profile: Path, *, width: int = 1600, height: int = 1000) -> None:
        self.binary, self.profile = binary, profile
        self.width, self.height = width, height
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None

    def __enter__(self) -> DevToolsPage:
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [
                self.binary,
                *HEADLESS_FLAGS,
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: helpers and renderers end with it
        )
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise DevToolsError(f"chromium did not open its DevTools port ({self._proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(t for t in targets if t.get("type") == "page")
            self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=self.width,
                height=self.height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One protocol command; its result (events arriving meanwhile are skipped)."""
        assert self._ws is not None, "not started"
        call_id = next(self._ids)
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") != call_id:
                continue
            if "error" in message:
                raise DevToolsError(f"{method}: {message['error']}")
            return message.get("result", {})  # type: ignore[no-any-return]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a page expression (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, *, timeout: float, what: str = "") -> Any:
        """Poll `expression` until it is truthy; its value. Fails with the page's text otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(DevToolsError):
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise AssertionError(
                    f"timed out after {timeout:.0f}s waiting for {what or expression[:200]}; "
                    f"the page shows:\n{str(text)[:3000]}"
                )
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        """The viewport as a PNG file."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
