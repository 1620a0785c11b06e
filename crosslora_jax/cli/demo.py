"""`python -m crosslora_jax.demo`: a complete transfer on small generated models, no download.

Writes a llama-style source (4 layers, hidden 64), a gemma2-style target of another size
(6 layers, hidden 96, GQA) and a rank-8 LoRA on the source into --workdir, transfers it, and
prints the per-module report. The two bases are independent random models, so their subspace
similarity sits at chance level: the demo shows the machinery, not a useful adapter.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from crosslora_jax import synthetic
from crosslora_jax.cli._common import parse_flags, run_guarded
from crosslora_jax.io.report import REPORT_FILE, format_table
from crosslora_jax.ops import METHODS, SvdSettings
from crosslora_jax.pipeline import TransferOptions, transfer

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Folder for the generated models and output (default: a new temp folder)."
)
_METHOD = flags.DEFINE_enum("method", "cross_lora", METHODS, "Transfer method.")
# Below the tiny models' widths, so that the truncation and the similarity scores mean something.
_SVD_RANK = flags.DEFINE_integer("svd_rank", 24, "Rank of the truncated SVDs.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        work = Path(_WORKDIR.value or tempfile.mkdtemp(prefix="crosslora-demo-"))
        src_cfg = synthetic.model_config("llama", hidden=64, intermediate=160, heads=4, kv_heads=4, layers=4)
        tgt_cfg = synthetic.model_config(
            "gemma2", hidden=96, intermediate=256, heads=4, kv_heads=2, layers=6, head_dim=32
        )
        src = synthetic.write_model(work / "source_llama", src_cfg, synthetic.model_tensors(src_cfg, seed=1))
        tgt = synthetic.write_model(work / "target_gemma2", tgt_cfg, synthetic.model_tensors(tgt_cfg, seed=2), shards=2)
        adapter = synthetic.write_adapter(work / "source_adapter", src_cfg, seed=3, roles=("q", "v", "down"))
        output = work / "target_adapter"
        options = TransferOptions(method=_METHOD.value, svd=SvdSettings(rank=_SVD_RANK.value))
        (report,) = transfer(src, tgt, [adapter], output, options, overwrite=True)
        print(f"source: {src} (llama, 4 layers)\ntarget: {tgt} (gemma2, 6 layers, 2 shards)")
        print(f"method: {report['method']}, layer map: {report['layer_map']['kind']} "
              f"{report['layer_map']['target_to_source']}")  # fmt: skip
        print(format_table(report["modules"]))
        print(f"summary: {json.dumps(report['summary'])}")
        print(f"adapter written to {output} (report: {output / REPORT_FILE})")

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=parse_flags)
