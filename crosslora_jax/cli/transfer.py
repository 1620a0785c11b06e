"""Move a PEFT LoRA adapter from the base model it was trained on to another base model.

Usage: python -m crosslora_jax.transfer --source_model=DIR --target_model=DIR --adapter=DIR
           --output=DIR [--method=cross_lora|lora_x|truncate] [--flagfile=FILE] ...

Progress goes to stderr, the summary (modules moved and skipped, subspace similarity beside its
chance level, norm ratios) to stdout; every figure is explained in docs/method.md of the
crosslora_jax repository.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import jax
from absl import app, flags, logging

from crosslora_jax._errors import OptionsError
from crosslora_jax._progress import Progress
from crosslora_jax._xla_cache import enable_compilation_cache
from crosslora_jax.cli._common import define_distributed_flags, define_flags_from, flags_parser, run_guarded
from crosslora_jax.io.report import format_summary, format_table
from crosslora_jax.io.report_plot import require_matplotlib, write_report_plot
from crosslora_jax.pipeline import TransferOptions, transfer

_SOURCE = flags.DEFINE_string("source_model", None, "HF model folder the adapter was trained on.")
_TARGET = flags.DEFINE_string("target_model", None, "HF model folder to move the adapter to.")
_ADAPTER = flags.DEFINE_multi_string("adapter", None, "PEFT LoRA adapter folder for the source; repeat for several.")
_OUTPUT = flags.DEFINE_string("output", None, "Output adapter folder (a parent folder when --adapter repeats).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output.")
_OPTIONS = define_flags_from(TransferOptions, __name__)  # --method, --svd_rank, --svd, ... --energy_warning
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir", None, "Keep base-model subspaces (orbax) and compiled XLA programs here and reuse them."
)
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Keep compiled XLA programs between runs (under --cache_dir/xla, else ~/.cache/crosslora_jax/xla).",
)
_START_DISTRIBUTED = define_distributed_flags(__name__)  # --distributed, --coordinator_address, ...
_PLOT = flags.DEFINE_bool(
    "plot", False, "Also write crosslora_report.png (layer × role heat maps) beside each report; needs the plot extra."
)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        for name, flag in (("--source_model", _SOURCE), ("--target_model", _TARGET), ("--output", _OUTPUT)):
            if not flag.value:
                raise OptionsError(name, "is required")
        if not _ADAPTER.value:
            raise OptionsError("--adapter", "is required")
        options = _OPTIONS()
        _START_DISTRIBUTED()
        if _PLOT.value:
            require_matplotlib()  # refuse before any work
        if _COMPILATION_CACHE.value:
            enable_compilation_cache(_CACHE_DIR.value or None)
        started = time.perf_counter()
        reports = transfer(
            _SOURCE.value,
            _TARGET.value,
            _ADAPTER.value,
            _OUTPUT.value,
            options,
            overwrite=_OVERWRITE.value,
            cache_dir=_CACHE_DIR.value,
            progress=Progress.to_stderr() if jax.process_index() == 0 else None,
        )
        seconds = time.perf_counter() - started
        for n, report in enumerate(reports if jax.process_index() == 0 else []):
            logging.info("adapter %s:\n%s", report.adapter, format_table(report.modules))
            folder = _OUTPUT.value if len(reports) == 1 else report.output
            print(("\n" if n else "") + format_summary(report, folder, seconds), file=sys.stdout, flush=True)
            if _PLOT.value and report.output is not None:
                print(f"  plot: {write_report_plot(report.output, report)}", flush=True)

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))
