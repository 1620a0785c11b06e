"""Move a PEFT LoRA adapter to another base model and refine it by distillation, without user data.

Usage: python -m crosslora_jax.distill --source_model=DIR --target_model=DIR --adapter=DIR
           --output=DIR [--init=cross_lora|lora_x|truncate|zero] [--learn=lora|transform]
           [--kd=auto|full|delta|product|sequence|shared|bytes] [--steps=N] [--flagfile=FILE] ...

The source model with its adapter (the teacher) samples text from generic starts (or from
--prompts_file); the target model with a trainable adapter (the student) learns to match it.
Progress (loss, tokens/s, ETA) goes to stderr, the summary to stdout; the report
(crosslora_report.json) gains a `distill` section. Every visible device takes part (batches
split over them, frozen weights sharded); for several hosts, start the same command on each
with --distributed. Details in docs/method.md of the
crosslora_jax repository.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import jax
from absl import app, flags

from crosslora_jax._errors import OptionsError
from crosslora_jax._progress import Progress
from crosslora_jax._xla_cache import enable_compilation_cache
from crosslora_jax.cli._common import define_distributed_flags, define_flags_from, flags_parser, run_guarded
from crosslora_jax.distillation import DistillOptions, DistillReport, distill
from crosslora_jax.io.report import format_summary

_SOURCE = flags.DEFINE_string("source_model", None, "HF model folder the adapter was trained on (the teacher).")
_TARGET = flags.DEFINE_string("target_model", None, "HF model folder to move the adapter to (the student).")
_ADAPTER = flags.DEFINE_string("adapter", None, "PEFT LoRA adapter folder for the source.")
_OUTPUT = flags.DEFINE_string("output", None, "Output adapter folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    None,
    "Keep base-model subspaces, compiled XLA programs and training checkpoints here; rerunning an "
    "interrupted command with the same flags resumes from its last checkpoint.",
)
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled XLA programs between runs (under --cache_dir/xla, else ~/.cache)."
)
# --init, --learn, --kd, --svd_rank, --svd, ..., --output_dtype: one flag per DistillOptions field
_OPTIONS = define_flags_from(DistillOptions, __name__)
_START_DISTRIBUTED = define_distributed_flags(__name__)  # --distributed, --coordinator_address, ...


def _distill_lines(section: DistillReport) -> str:
    held = section.heldout
    lines = [f"  distill: {section.objective}, {section.tokens_seen:,} tokens seen"]
    if section.loss_curve:
        lines.append(f"  training loss {section.loss_curve[0].loss:.4f} -> {section.loss_curve[-1].loss:.4f}")
    if held.objective is not None:
        lines.append(f"  held-out {held.measure}: {held.objective.before:.4f} -> {held.objective.after:.4f}")
    if "kl_to_teacher" in held.also:
        kl = held.also["kl_to_teacher"]
        lines.append(f"  held-out KL to the teacher: {kl.before:.4f} -> {kl.after:.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        for name, flag in (("--source_model", _SOURCE), ("--target_model", _TARGET), ("--adapter", _ADAPTER),
                           ("--output", _OUTPUT)):  # fmt: skip
            if not flag.value:
                raise OptionsError(name, "is required")
        options = _OPTIONS()
        _START_DISTRIBUTED()
        if _COMPILATION_CACHE.value:
            enable_compilation_cache(_CACHE_DIR.value or None)
        started = time.perf_counter()
        report = distill(
            _SOURCE.value,
            _TARGET.value,
            _ADAPTER.value,
            _OUTPUT.value,
            options,
            overwrite=_OVERWRITE.value,
            cache_dir=_CACHE_DIR.value,
            progress=Progress.to_stderr() if jax.process_index() == 0 else None,
        )
        if jax.process_index() != 0:  # process 0 writes and reports
            return
        seconds = time.perf_counter() - started
        summary = format_summary(report, _OUTPUT.value, seconds)
        assert report.distill is not None  # distill() always sets it
        print(f"{summary}\n{_distill_lines(report.distill)}", file=sys.stdout, flush=True)

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))
