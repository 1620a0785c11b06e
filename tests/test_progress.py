"""The progress reporter: weighted ETA, a redrawn bar on a terminal, one line per step elsewhere."""

from __future__ import annotations

import io

import pytest

from crosslora_jax._progress import Progress, format_duration


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (42.4, "42s"), (187, "3m07s"), (3725, "1h02m")])
def test_format_duration(seconds, text) -> None:
    assert format_duration(seconds) == text


def test_eta_weighs_steps_by_cost() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(out, clock=clock)
    progress.start(total=10.0, steps=2)
    assert progress.eta() is None
    clock.now += 4.0  # the first step is 2 of 10 units: 4 s per 2 units leaves 16 s for 8
    progress.step(2.0, "small chunk")
    assert progress.eta() == pytest.approx(16.0)
    clock.now += 16.0
    progress.step(8.0, "large chunk")
    assert progress.eta() == pytest.approx(0.0)
    lines = out.getvalue().splitlines()
    assert lines == [
        "[1/2  20%] small chunk; elapsed 4s, ETA 16s",
        "[2/2 100%] large chunk; elapsed 20s, ETA 0s",
    ]


def test_a_note_is_one_line_between_steps() -> None:
    out = io.StringIO()
    progress = Progress(out, clock=FakeClock())
    progress.start(total=1.0, steps=1)
    progress.note("fingerprinting model.safetensors (9.9 GB; once per file version)")
    progress.step(1.0, "only step")
    assert out.getvalue().splitlines()[0] == "fingerprinting model.safetensors (9.9 GB; once per file version)"
    assert out.getvalue().splitlines()[1].startswith("[1/1 100%] only step")


def test_a_terminal_gets_one_redrawn_line() -> None:
    clock, out = FakeClock(), Terminal()
    progress = Progress(out, clock=clock)
    progress.start(total=4.0, steps=4)
    progress.working("role q chunk 1/4")
    clock.now += 1.0
    progress.step(1.0, "role q chunk 1/4 done")
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n"), repr(text)
    assert text.count("\r") == 2
    assert "[######------------------]  25% 1/4 role q chunk 1/4 done; elapsed 1s, ETA 3s" in text


def test_without_a_stream_steps_are_logged(caplog) -> None:
    from absl import logging

    before = logging.get_verbosity()
    logging.set_verbosity(logging.INFO)
    try:
        progress = Progress()
        progress.start(total=1.0, steps=1)
        with caplog.at_level("INFO"):
            progress.step(1.0, "only step")
    finally:
        logging.set_verbosity(before)
    assert any("[1/1 100%] only step" in r.getMessage() for r in caplog.records)
