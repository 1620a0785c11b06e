"""Move a PEFT LoRA adapter from the base model it was trained on to another base model.

Usage: python -m crosslora_jax.transfer --source_model=DIR --target_model=DIR --adapter=DIR
           --output=DIR [--method=cross_lora|lora_x|truncate] [--flagfile=FILE] ...

Progress goes to stderr, the summary (modules moved and skipped, subspace similarity beside its
chance level, norm ratios) to stdout; every figure is explained in docs/method.md of the
crosslora_jax repository.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import jax
from absl import app, flags, logging

from crosslora_jax._verdict import distill_command
from crosslora_jax.cli._common import (
    define_distributed_flags,
    define_flags_from,
    define_run_flags,
    flags_parser,
    run_guarded,
)
from crosslora_jax.transfer import TransferOptions, transfer
from crosslora_jax.transfer.report import TransferReport
from crosslora_jax.transfer.report_plot import require_matplotlib, write_report_plot
from crosslora_jax.transfer.report_text import format_summary, format_table

_RUN = define_run_flags(
    __name__,
    source="HF model folder the adapter was trained on.",
    target="HF model folder to move the adapter to.",
    adapter="PEFT LoRA adapter folder for the source; repeat for several.",
    output="Output adapter folder (a parent folder when --adapter repeats).",
    cache_dir="Keep base-model subspaces (orbax) and compiled XLA programs here and reuse them.",
    several_adapters=True,
)  # --source_model, --target_model, --adapter, --output, --overwrite, --cache_dir, --compilation_cache
_OPTIONS = define_flags_from(TransferOptions, __name__)  # --method, --svd_rank, --svd, ... --energy_warning
_START_DISTRIBUTED = define_distributed_flags(__name__)  # --distributed, --coordinator_address, ...
_PLOT = flags.DEFINE_bool(
    "plot", False, "Also write crosslora_report.png (layer × role heat maps) beside each report; needs the plot extra."
)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        _RUN.check()
        options = _OPTIONS()
        _START_DISTRIBUTED()
        if _PLOT.value:
            require_matplotlib("--plot")  # refuse before any work
        reports, seconds = _RUN.run_job(transfer, options)
        for n, report in enumerate(reports if jax.process_index() == 0 else []):
            logging.info("adapter %s:\n%s", report.adapter, format_table(report.modules))
            folder = _RUN.output.value if len(reports) == 1 else report.output
            summary = format_summary(report, folder, seconds, instead=_distill_instead(report, len(reports) == 1))
            print(("\n" if n else "") + summary, file=sys.stdout, flush=True)
            if _PLOT.value and report.output is not None:
                print(f"  plot: {write_report_plot(report.output, report)}", flush=True)

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))


def _distill_instead(report: TransferReport, only_one: bool) -> str:
    """The `distill` command for this adapter, with the paths as the user typed them where the
    run had one adapter (else the adapter and output folders the run resolved)."""
    adapter, output = (_RUN.adapter.value[0], _RUN.output.value) if only_one else (report.adapter, report.output)
    return distill_command(_RUN.source_model.value, _RUN.target_model.value, str(adapter), str(output),
                           _RUN.cache_dir.value)  # fmt: skip
