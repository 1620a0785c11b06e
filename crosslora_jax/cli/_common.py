"""What every entry point shares: one-line errors with exit 2, and prompt clean-up on SIGTERM."""

from __future__ import annotations

import logging as std_logging
import os
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from absl import flags, logging

from crosslora_jax import _interrupt
from crosslora_jax._errors import CrossLoraError

EXIT_BAD_INPUT = 2


def _raise_interrupt(signum: int, frame: object) -> NoReturn:  # noqa: ARG001
    _interrupt.request_stop(signum)  # in case a library call swallows the KeyboardInterrupt
    raise KeyboardInterrupt(f"signal {signum}")


class _QuietOrbax(std_logging.Filter):
    """orbax logs several INFO lines per checkpoint through absl; keep only its warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag is a one-line `error:` and exit 2 like any bad input."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def run_guarded(body: Callable[[], None]) -> None:
    """Run `body`; bad input becomes `error: ...` on stderr and exit 2, a signal 128 + its number.

    SIGTERM is turned into KeyboardInterrupt so the staging folder's clean-up runs.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    logging.get_absl_handler().addFilter(_QuietOrbax())
    try:
        body()
    except CrossLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        logging.warning("interrupted; temporary output removed")
        print("error: interrupted", file=sys.stderr)
        sys.exit(_interrupt.exit_status())
