"""The plateau rule on hand-built held-out curves: warm-up, improvements beyond the measured
jitter, patience, rate cuts, the stop, diverged values, and its JSON round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crosslora_jax.distillation._schedule import PlateauRule, PlateauState

RULE = PlateauRule(learning_rate=1e-2, warmup_steps=4, eval_every=10, patience=3, min_delta=1e-2, decay=0.5, decays=1)


def _feed(values: list[float], rule: PlateauRule = RULE) -> tuple[PlateauState, list[bool]]:
    state = PlateauState()
    kept = [state.observe(rule, 10 * i, v) for i, v in enumerate(values)]
    return state, kept


def test_the_rate_warms_up_then_holds_and_follows_the_cuts() -> None:
    rates = [RULE.learning_rate_at(step, 1.0) for step in range(8)]
    np.testing.assert_allclose(rates[:5], [0.2e-2, 0.4e-2, 0.6e-2, 0.8e-2, 1e-2])
    assert rates[5:] == [1e-2] * 3
    assert RULE.learning_rate_at(100, 0.25) == pytest.approx(0.25e-2)


def test_a_falling_curve_never_plateaus_and_keeps_its_newest_best() -> None:
    state, kept = _feed([1.0, 0.8, 0.6, 0.5, 0.42, 0.36, 0.31])
    assert all(kept) and state.cuts == 0 and state.stopped is None and state.best_step == 60


def test_patience_then_a_cut_then_the_stop() -> None:
    # flat after the second value: 3 evaluations → cut (×0.5), 3 more → the stop (decays = 1)
    state, kept = _feed([1.0, 0.5, 0.5, 0.5, 0.5])
    assert (state.cuts, state.scale, state.stopped) == (1, 0.5, None)
    for step, value in ((50, 0.5), (60, 0.5), (70, 0.5)):
        state.observe(RULE, step, value)
    assert state.stopped == "plateau" and state.best_step == 10
    assert kept == [True, True, False, False, False]


def test_a_fall_smaller_than_min_delta_is_a_new_best_but_not_an_improvement() -> None:
    state, kept = _feed([1.0, 0.996, 0.993, 0.991])  # 0.9 % in all: min_delta is 1 %
    assert kept == [True, True, True, True] and state.best_step == 30  # the lowest is kept
    assert state.cuts == 1  # but three of them were a plateau


def test_improvements_must_beat_the_measured_jitter() -> None:
    # a level around 1.0 jittering by ±0.05, then falls of 0.04 and 0.03: 1 % of the value would
    # count them as improvements, twice the jitter does not
    rule = PlateauRule(1e-2, 0, 10, patience=10, min_delta=1e-2, decay=0.5, decays=1)
    jitter = [1.0, 1.05, 0.95, 1.05, 0.95, 1.05]
    state, _ = _feed(jitter, rule)
    d = np.diff(jitter)
    assert state.noise() == pytest.approx(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2), rel=1e-9)
    assert 2 * state.noise() > 0.05
    state, _ = _feed([*jitter, 0.91, 0.88], rule)
    # 0.95 was an improvement (three differences are needed to measure the jitter); the falls to
    # 0.91 and 0.88 are not, but the lowest is kept
    assert state.reference == 0.95 and state.best == 0.88 and state.since_improvement == 5
    steady, _ = _feed([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], rule)  # falls by 0.1 each: no jitter at all
    assert steady.noise() == pytest.approx(0.0, abs=1e-12) and steady.reference == 0.4


def test_a_diverged_evaluation_is_neither_best_nor_improvement() -> None:
    state, kept = _feed([1.0, math.nan, math.inf])
    assert kept == [True, False, False] and state.best == 1.0 and state.since_improvement == 2


def test_the_state_round_trips_through_json() -> None:
    import json

    state, _ = _feed([1.0, 0.7, 0.7, 0.69, 0.71, 0.7])
    again = PlateauState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
