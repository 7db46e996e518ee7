"""The lifecycle shared by the fake HTTP servers (feeds, LLM): serve on a daemon thread, stop fast.

- `serve(httpd, name=..., poll_interval=...)` starts ``httpd.serve_forever`` on a daemon thread
  and returns the thread; `shut(httpd, thread)` stops serving, closes the socket and waits up to
  5 s for the thread. Stalled handlers never delay `shut` (the servers set ``block_on_close``
  off and ``daemon_threads`` on).
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


def serve(httpd: ThreadingHTTPServer, *, name: str, poll_interval: float) -> threading.Thread:
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": poll_interval}, name=name, daemon=True
    )
    thread.start()
    return thread


def shut(httpd: ThreadingHTTPServer, thread: threading.Thread | None) -> None:
    httpd.shutdown()
    httpd.server_close()
    if thread is not None:
        thread.join(timeout=5)
