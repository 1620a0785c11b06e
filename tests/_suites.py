"""Which tests form the marked suite, and why: the one list.

`python -m pytest -q` (README, pyproject addopts `-m "not slow and not interop"`) runs the fast
suite; `HYPOTHESIS_PROFILE=full python -m pytest -q -m "slow or interop or hypothesis"` runs the
marked one (.ci/run runs both). Tests marked `slow` or `interop` in their own file count as
well; the entries below are marked `slow` by conftest's collection hook. Each key is a node-id
prefix; an entry that matches no collected test fails the session, so the list stays true.
Nothing here is skipped: every test runs in one of the two suites.
"""

from __future__ import annotations

SLOW: dict[str, str] = {
    "tests/tools/": "benchmark and replication smoke runs: each tool end to end, 10-160 s apiece",
    "tests/distillation/test_distill_scale.py": "8-device and two-process distillations in subprocesses",
    "tests/test_scale.py::test_eight_devices_give_the_same_adapter_as_one": "an 8-device transfer in a subprocess",
    "tests/eval/test_generate.py::test_eight_devices_give_the_same_tokens_as_one": "8-device sampling in a subprocess",
    "tests/cli/test_bad_input_cli.py::test_a_signal_mid_run_stops_promptly_and_leaves_nothing": (
        "SIGTERM/SIGINT into a running command, then a clean rerun: 35-56 s each"
    ),
}
