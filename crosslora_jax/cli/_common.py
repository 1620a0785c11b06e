"""What every entry point shares: one-line errors with exit 2, and prompt clean-up on SIGTERM."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import logging

from crosslora_jax._errors import CrossLoraError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _raise_interrupt(signum: int, frame: object) -> NoReturn:  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(body: Callable[[], None]) -> None:
    """Run `body`; bad input becomes `error: ...` on stderr and exit 2, a signal exit 130.

    SIGTERM is turned into KeyboardInterrupt so the staging folder's clean-up runs.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        body()
    except CrossLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        logging.warning("interrupted; temporary output removed")
        print("error: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
