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
from collections.abc import Sequence

import jax
from absl import app

from crosslora_jax.cli._common import (
    define_distributed_flags,
    define_flags_from,
    define_run_flags,
    flags_parser,
    run_guarded,
)
from crosslora_jax.distillation import DistillOptions, DistillReport, distill
from crosslora_jax.transfer.report_text import format_summary

_RUN = define_run_flags(
    __name__,
    source="HF model folder the adapter was trained on (the teacher).",
    target="HF model folder to move the adapter to (the student).",
    adapter="PEFT LoRA adapter folder for the source.",
    output="Output adapter folder.",
    cache_dir="Keep base-model subspaces, compiled XLA programs and training checkpoints here; rerunning an "
    "interrupted command with the same flags resumes from its last checkpoint.",
)  # --source_model, --target_model, --adapter, --output, --overwrite, --cache_dir, --compilation_cache
# --init, --learn, --kd, --svd_rank, --svd, ..., --output_dtype: one flag per DistillOptions field
_OPTIONS = define_flags_from(DistillOptions, __name__)
_START_DISTRIBUTED = define_distributed_flags(__name__)  # --distributed, --coordinator_address, ...


def _distill_lines(section: DistillReport) -> str:
    held = section.heldout
    lines = [f"  distill: {section.objective}, {section.tokens_seen:,} tokens seen"]
    if section.loss_curve:
        lines.append(f"  training loss {section.loss_curve[0].loss:.4f} -> {section.loss_curve[-1].loss:.4f}")
    lines.append(f"  {_stopping_line(section)}")
    if held.objective is not None:
        lines.append(f"  held-out {held.measure}: {held.objective.before:.4f} -> {held.objective.after:.4f}")
    if "kl_to_teacher" in held.also:
        kl = held.also["kl_to_teacher"]
        lines.append(f"  held-out KL to the teacher: {kl.before:.4f} -> {kl.after:.4f}")
    return "\n".join(lines)


def _stopping_line(section: DistillReport) -> str:
    stop, cap = section.stopping, section.settings.steps
    if stop.reason == "plateau":
        text = f"stopped on a plateau at step {stop.steps_run:,} (cap {cap:,}); kept step {stop.best_step:,}"
    elif stop.reason == "step cap":
        text = f"reached the --steps cap ({cap:,}) before a plateau; kept step {stop.best_step:,}"
    else:
        text = f"trained {stop.steps_run:,} steps (early stopping off)"
    if section.resumed_from_step:
        text += f"; resumed at step {section.resumed_from_step:,}, figures cover the whole run"
    return text


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        _RUN.check()
        options = _OPTIONS()
        _START_DISTRIBUTED()
        report, seconds = _RUN.run_job(distill, options)
        if jax.process_index() != 0:  # process 0 writes and reports
            return
        assert report.distill is not None  # distill() always sets it
        init = report.distill.settings.init
        subject = None if init == "zero" else f"the {init} init alone"  # zero starts from B = 0: nothing moved
        summary = format_summary(report, _RUN.output.value, seconds, subject=subject)
        print(f"{summary}\n{_distill_lines(report.distill)}", file=sys.stdout, flush=True)

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))
