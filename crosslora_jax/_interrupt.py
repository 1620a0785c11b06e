"""A process-wide stop request, checked between chunks.

The CLI's signal handler raises KeyboardInterrupt, but a library call on the stack can swallow
it (seen in a CLI test where a run carried on after SIGINT). The handler therefore also records
the request here, and the pipeline checks it between chunks and before writing.
"""

from __future__ import annotations

import threading

_requested = threading.Event()


def request_stop() -> None:
    _requested.set()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested."""
    if _requested.is_set():
        raise KeyboardInterrupt("stop requested")
