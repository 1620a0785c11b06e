"""Score a model (optionally with a PEFT adapter) on a task file.

Usage: python -m crosslora_jax.evaluate --model=DIR [--adapter=DIR] --task=FILE [--output=FILE]

A .jsonl task is multiple choice (`question`, `choices`, `answer`), scored by log-likelihood;
any other file is plain text, scored by mean token loss. Needs the model's tokenizer.json.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from crosslora_jax._errors import OptionsError, OutputError
from crosslora_jax.cli._common import define_flags_from, flags_parser, run_guarded
from crosslora_jax.eval import EvalOptions, evaluate

_MODEL = flags.DEFINE_string("model", None, "HF model folder (config.json, safetensors, tokenizer.json).")
_ADAPTER = flags.DEFINE_string("adapter", None, "PEFT LoRA adapter folder for --model (optional).")
_TASK = flags.DEFINE_string("task", None, "Task file: .jsonl multiple choice, anything else plain text.")
_OPTIONS = define_flags_from(EvalOptions, __name__)  # --task_format, --batch_size, --max_length
_OUTPUT = flags.DEFINE_string("output", None, "Also write the metrics as JSON to this file.")


class _ProgressLine:
    """`evaluating [#####-----] 5/10 batches, 1.2s` on stderr, rewritten in place."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        bar = "#" * (20 * done // total) + "-" * (20 - 20 * done // total)
        elapsed = time.perf_counter() - self.started
        end = "\n" if done == total else ""
        print(f"\revaluating [{bar}] {done}/{total} batches, {elapsed:.1f}s", end=end, file=sys.stderr, flush=True)


def _format(result: dict[str, object]) -> str:
    if result["kind"] == "choice":
        return (
            f"questions {result['questions']}  acc {result['acc']:.4f} ± {result['acc_stderr']:.4f}  "
            f"acc_norm {result['acc_norm']:.4f} ± {result['acc_norm_stderr']:.4f}  (chance {result['chance']:.4f})"
        )
    return (
        f"tokens {result['tokens']}  loss {result['loss']:.4f} ± {result['loss_stderr']:.4f} nats/token  "
        f"perplexity {result['perplexity']:.3f}  bits/byte {result['bits_per_byte']:.4f}"
    )


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        for name, flag in (("--model", _MODEL), ("--task", _TASK)):
            if not flag.value:
                raise OptionsError(name, "is required")
        options = _OPTIONS()
        result = evaluate(_MODEL.value, _TASK.value, _ADAPTER.value, options, progress=_ProgressLine())
        print(f"{result['task']}: {_format(result)}")
        if _OUTPUT.value:
            try:
                Path(_OUTPUT.value).write_text(json.dumps(result, indent=2) + "\n")
            except OSError as e:
                raise OutputError(_OUTPUT.value, f"cannot write: {e}") from None

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))
