"""Progress of a long run with an ETA: a redrawn bar on a terminal, one line per step elsewhere.

Steps carry a cost (e.g. the SVD flops of a layer chunk), so the ETA weighs a 3B model's chunk
more than a 1.5B model's. The first step includes compiling, so early ETAs run long.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from absl import logging

_BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s`, `1h02m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Weighted progress of `start(total)` worth of steps.

    `stream=None` logs each step at INFO (the library's default: silent unless the caller shows
    absl's INFO); a stream that is a terminal gets one bar redrawn in place, any other stream one
    line per step.
    """

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())
        self._clock = clock
        self._total = 0.0
        self._done = 0.0
        self._skipped = 0.0  # of `_done`, work done before this run (`skip`): not timed here
        self._steps = 0
        self._count = 0
        self._started = clock()
        self._drawn = False

    @classmethod
    def to_stderr(cls) -> Progress:
        return cls(sys.stderr)

    def start(self, total: float, steps: int) -> None:
        self._total, self._count, self._done, self._skipped, self._steps = max(total, 0.0), steps, 0.0, 0.0, 0
        self._started = self._clock()

    def working(self, label: str) -> None:
        """What the current step is doing now (shown on a terminal only: it costs no line)."""
        if self._tty:
            self._draw(label)

    def note(self, text: str) -> None:
        """Long work outside the steps (e.g. hashing a checkpoint once): shown in the bar on a
        terminal, one line on other streams, INFO when there is no stream."""
        if self._tty:
            self._draw(text)
        elif self._stream is not None:
            print(text, file=self._stream, flush=True)
        else:
            logging.info("%s", text)

    def step(self, cost: float, label: str) -> None:
        """One step of `cost` finished."""
        self._done += cost
        self._steps += 1
        if self._tty:
            self._draw(label)
        elif self._stream is not None:
            print(self._line(label), file=self._stream, flush=True)
        else:
            logging.info("%s", self._line(label))

    def skip(self, cost: float, label: str) -> None:
        """One step of `cost` done before this run (a resumed run's restored steps): it moves the
        bar but not the rate, so the ETA is timed on this run's work only."""
        self._skipped += cost
        self.step(cost, label)

    def close(self) -> None:
        """End the bar's line so later output starts on a fresh one."""
        if self._tty and self._drawn:
            print(file=self._stream, flush=True)
            self._drawn = False

    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first timed step."""
        timed = self._done - self._skipped
        if timed <= 0:
            return None
        elapsed = self._clock() - self._started
        return elapsed * max(self._total - self._done, 0.0) / timed

    def _fraction(self) -> float:
        return min(self._done / self._total, 1.0) if self._total > 0 else 1.0

    def _timing(self) -> str:
        elapsed = format_duration(self._clock() - self._started)
        eta = self.eta()
        return f"elapsed {elapsed}, ETA {'?' if eta is None else format_duration(eta)}"

    def _line(self, label: str) -> str:
        width = len(str(self._count))
        return f"[{self._steps:>{width}}/{self._count} {100 * self._fraction():3.0f}%] {label}; {self._timing()}"

    def _draw(self, label: str) -> None:
        filled = round(_BAR_WIDTH * self._fraction())
        bar = "#" * filled + "-" * (_BAR_WIDTH - filled)
        text = f"\r[{bar}] {100 * self._fraction():3.0f}% {self._steps}/{self._count} {label}; {self._timing()}"
        print(f"{text[:160]}\x1b[K", end="", file=self._stream, flush=True)
        self._drawn = True
