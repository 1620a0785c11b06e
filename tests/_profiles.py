"""Hypothesis budgets: few examples per property in the fast suite, each test's own number in
the marked run (.ci/run sets HYPOTHESIS_PROFILE=full for `-m "slow or interop or hypothesis"`).

A test that sets `max_examples` itself overrides the profile, so tests write `examples(n)`."""

from __future__ import annotations

import os

from hypothesis import settings

FAST_EXAMPLES = 10
FULL = os.environ.get("HYPOTHESIS_PROFILE", "fast") == "full"

settings.register_profile("fast", max_examples=FAST_EXAMPLES, deadline=None)
settings.register_profile("full", deadline=None)
settings.load_profile("full" if FULL else "fast")


def examples(n: int) -> int:
    """`n` under the full profile, at most FAST_EXAMPLES otherwise."""
    return n if FULL else min(n, FAST_EXAMPLES)
