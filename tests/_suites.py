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
    # The commands as subprocesses: each case pays an interpreter and a JAX start (3-13 s on the
    # 2-core machine) before its own work. The library calls under them stay in the fast suite
    # (the same bad inputs through the API: tests/test_bad_input_api.py).
    "tests/cli/test_bad_input_cli.py": "bad input, bad flags and SIGTERM/SIGINT through the commands: exit 2 / 143 / 130",
    "tests/cli/test_cli_ux.py": "the commands' --help, progress, summary, --plot and default compilation cache",
    "tests/cli/test_stderr.py": "what a command's stderr holds at each verbosity",
    "tests/cli/test_configs.py::test_the_readme_flagfile_runs_twice_from_a_working_directory": "two transfer commands",
    "tests/distillation/test_distill.py::test_the_command_prints_progress_and_a_summary": "the distill command",
    "tests/distillation/test_distill.py::test_sigterm_then_the_same_command_resumes": "distill, SIGTERM, rerun",
    "tests/distillation/test_distill.py::test_bad_input_is_one_line_exit_2": "bad input through the distill command",
    "tests/eval/test_evaluate_cli.py::test_multiple_choice_end_to_end": "the evaluate command, twice",
    "tests/eval/test_evaluate_cli.py::test_text_end_to_end": "the evaluate command",
    "tests/eval/test_evaluate_cli.py::test_errors_are_one_line_exit_2": "bad input through the evaluate command",
}
