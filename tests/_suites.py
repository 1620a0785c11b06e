"""Which tests form the marked suite, and why: the one list.

`python -m pytest -q` (README, pyproject addopts `-m "not slow and not interop"`) runs the fast
suite; `HYPOTHESIS_PROFILE=full python -m pytest -q -m "slow or interop or hypothesis"` runs the
marked one (.ci/run runs both). Tests marked `slow` or `interop` in their own file count as
well; the entries below are marked `slow` by conftest's collection hook:
- SLOW: node-id prefixes, every matching test;
- SAMPLED: parametrized tests (node id without its [parameters]) run over every architecture or
  variant: the named parameter set stays in the fast suite, the others are marked.
An entry that matches no collected test fails a whole-suite run, so the lists stay true.
Nothing here is skipped: every test runs in one of the two suites.
"""

from __future__ import annotations

SLOW: dict[str, str] = {
    "tests/tools/": "benchmark and replication smoke runs: each tool end to end, 10-160 s apiece",
    "tests/distillation/test_distill_scale.py": "8-device and two-process distillations in subprocesses",
    "tests/test_scale.py": (
        "8 devices and 2 processes in subprocesses; warm, damaged and resumed caches and many adapters through "
        "the whole pipeline on a 5 → 7-layer pair in chunks (5-105 s each under load)"
    ),
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
    "tests/eval/test_evaluate_cli.py::test_scores_match_transformers": "scores against transformers' model (torch)",
    # Whole distillations through distill() (16-51 s each under load); the fast suite keeps one
    # tiny run end to end (tests/test_public_api.py, options=None) and the objectives' math.
    "tests/distillation/test_distill.py::test_distill_writes": "a whole distillation",
    "tests/distillation/test_distill.py::test_distilling_onto_phi3": "a whole distillation onto phi3",
    "tests/distillation/test_distill.py::test_different_tokenizers": "three whole distillations across tokenizers",
    "tests/distillation/test_distill.py::test_an_interrupted_run_resumes": "a distillation, interrupted and resumed",
    "tests/distillation/test_train.py::test_a_resumed_run_equals_the_uninterrupted_one": "two training loops",
    "tests/eval/test_generate.py::test_same_key_same_tokens_and_tiny_top_p_is_greedy": "several sampling loops",
    "tests/test_public_api.py::test_options_none_means_the_defaults_for_distill": "a whole (tiny) distillation",
    "tests/test_public_api.py::test_the_distill_console_script_is_installed_and_runs": "the distill command",
    "tests/ops/test_svd_engines_contract.py::test_gram_krylov_path": (
        "the gram engine's Krylov route at the sizes that take it (d ≥ 3584 at R = 16, ≥ 4608 at r = 320)"
    ),
}

SAMPLED: dict[str, tuple[str, str]] = {  # test: (the parameter id kept in the fast suite, why the rest moved)
    "tests/eval/test_generate.py::test_decode_logits_equal_the_full_forward": (
        "gemma2-lora",
        "a decode loop per architecture × LoRA (gemma2: softcaps, sliding windows, the LoRA side path)",
    ),
    "tests/eval/test_generate.py::test_greedy_equals_repeated_full_forward": (
        "llama",
        "a decode loop per architecture",
    ),
    "tests/eval/test_training_modes.py::test_remat_gives_the_same_loss_and_gradients": (
        "gemma2",
        "two gradients per architecture",
    ),
    "tests/distillation/test_train.py::test_only_the_student_moves_and_the_objective_falls": (
        "lora-full",
        "a training loop per objective and student",
    ),
}
