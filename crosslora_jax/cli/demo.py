"""A complete transfer on small generated models, no download.

Usage: python -m crosslora_jax.demo [--workdir=DIR] [--method=cross_lora|lora_x|truncate]

Writes a llama-style source (4 layers, hidden 64), a gemma2-style target of another size
(6 layers, hidden 96, GQA) and a rank-8 LoRA on the source, transfers it, and prints the
per-module report and the summary. Without --workdir everything goes to a temporary folder that
is removed at the end. The two bases are independent random models, so their subspace
similarity sits at chance level: the demo shows the machinery, not a useful adapter.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from absl import app, flags

from crosslora_jax import synthetic
from crosslora_jax._paths import absolute
from crosslora_jax._xla_cache import enable_compilation_cache
from crosslora_jax.cli._common import define_flags_from, flags_parser, run_guarded
from crosslora_jax.transfer import TransferOptions, transfer
from crosslora_jax.transfer.report_text import REPORT_FILE, format_summary, format_table

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Keep the generated models and output in this folder (default: a temporary folder, removed)."
)
# svd_rank below the tiny models' widths, so that the truncation and the similarity scores mean something.
_OPTIONS = define_flags_from(TransferOptions, __name__, only=("method", "svd_rank"), defaults={"svd_rank": 24})


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        options = _OPTIONS()  # bad values fail before anything is written
        enable_compilation_cache()
        with _workdir(_WORKDIR.value) as work:
            _demo(work, options, kept=_WORKDIR.value is not None)

    run_guarded(body)


@contextlib.contextmanager
def _workdir(given: str | None) -> Iterator[Path]:
    if given:
        yield absolute(given)
        return
    with tempfile.TemporaryDirectory(prefix="crosslora-demo-") as tmp:
        yield Path(tmp)


def _demo(work: Path, options: TransferOptions, kept: bool) -> None:
    started = time.perf_counter()
    src_cfg = synthetic.model_config("llama", hidden=64, intermediate=160, heads=4, kv_heads=4, layers=4)
    tgt_cfg = synthetic.model_config("gemma2", hidden=96, intermediate=256, heads=4, kv_heads=2, layers=6, head_dim=32)
    src = synthetic.write_model(work / "source_llama", src_cfg, synthetic.model_tensors(src_cfg, seed=1))
    tgt = synthetic.write_model(work / "target_gemma2", tgt_cfg, synthetic.model_tensors(tgt_cfg, seed=2), shards=2)
    adapter = synthetic.write_adapter(work / "source_adapter", src_cfg, seed=3, roles=("q", "v", "down"))
    output = work / "target_adapter"
    (report,) = transfer(src, tgt, [adapter], output, options, overwrite=True)
    print(f"source: {src} (llama, 4 layers)\ntarget: {tgt} (gemma2, 6 layers, 2 shards)")
    print(f"layer map: {report.layer_map.kind} {list(report.layer_map.target_to_source)}")
    print(format_table(report.modules))
    print(format_summary(report, output, time.perf_counter() - started))
    if kept:
        print(f"adapter written to {output} (report: {output / REPORT_FILE})")
    else:
        print("(temporary folder removed; pass --workdir=DIR to keep the models and the adapter)")


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))
