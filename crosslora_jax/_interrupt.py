"""A process-wide stop request, checked between chunks.

The CLI's signal handler raises KeyboardInterrupt, but a library call on the stack can swallow
it (seen in a CLI test where a run carried on after SIGINT). The handler therefore also records
the request here, and the pipeline checks it between chunks and before writing.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()
_signal = signal.SIGINT


def request_stop(signum: int = signal.SIGINT) -> None:
    global _signal
    _signal = signum
    _requested.set()


def exit_status() -> int:
    """The shell's convention for death by a signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(_signal)


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested."""
    if _requested.is_set():
        raise KeyboardInterrupt("stop requested")
