"""The progress reporter: weighted ETA, a redrawn bar on a terminal, one line per step elsewhere."""

from __future__ import annotations

import io
import re

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


def test_work_done_before_this_run_moves_the_bar_but_not_the_rate() -> None:
    """A resumed run: 60 of 100 units restored; the ETA is timed on this run's units only."""
    clock, out = FakeClock(), io.StringIO()
    progress = Progress(out, clock=clock)
    progress.start(total=100.0, steps=5)
    progress.skip(60.0, "resumed at step 60")
    assert progress.eta() is None  # nothing timed yet
    clock.now += 10.0
    progress.step(10.0, "step 70/100")  # 10 units in 10 s leaves 30 s for 30 (not 10 * 30 / 70)
    assert progress.eta() == pytest.approx(30.0)
    assert out.getvalue().splitlines() == [
        "[1/5  60%] resumed at step 60; elapsed 0s, ETA ?",
        "[2/5  70%] step 70/100; elapsed 10s, ETA 30s",
    ]
    progress.start(total=10.0, steps=1)  # a new start forgets the skipped work
    clock.now += 2.0
    progress.step(5.0, "half")
    assert progress.eta() == pytest.approx(2.0)


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


def test_a_transfer_says_which_subspaces_it_computed_and_which_it_restored(tmp_path) -> None:
    """Per chunk: SVDs computed on the first run; on the second every subspace comes from the
    cache, and the line says so instead of looking computed."""
    from crosslora_jax import SvdSettings, TransferOptions, synthetic, transfer

    cfg = synthetic.model_config("llama", hidden=16, intermediate=24, heads=2, kv_heads=1, layers=2)
    src = synthetic.write_model(tmp_path / "src", cfg, synthetic.model_tensors(cfg, seed=0))
    tgt = synthetic.write_model(tmp_path / "tgt", cfg, synthetic.model_tensors(cfg, seed=1))
    lora = synthetic.write_adapter(tmp_path / "lora", cfg, seed=2, roles=("q",))
    options = TransferOptions(svd=SvdSettings(rank=4))
    lines = []
    for run in ("first", "second"):
        out = io.StringIO()
        transfer(src, tgt, [lora], tmp_path / run, options, cache_dir=tmp_path / "cache", progress=Progress(out))
        lines.append([line.split("; elapsed")[0] for line in out.getvalue().splitlines() if line.startswith("[")])
    # one chunk of both target layers: 2 source + 2 target layers
    chunk = r"\[1/1 100%\] role q chunk 1/1 \(target layers 0-1\): "
    assert len(lines[0]) == len(lines[1]) == 1
    assert re.fullmatch(chunk + r"4 layer SVDs computed, done in \d+\.\ds", lines[0][0]), lines[0]
    assert re.fullmatch(chunk + r"4 layers' subspaces from the cache, done in \d+\.\ds", lines[1][0]), lines[1]
