"""The transfer: a LoRA adapter moved onto another base model, without data or training.

plan (`_plan`: layer map, header checks, chunks of one role's layers)
→ subspaces (`_subspaces`: each chunk's truncated SVDs from the previous chunk, the cache
  folder (`_subspace_cache`) or computed (`_weight_subspaces`))
→ project + gate (`_project`: the ops on sharded stacks, φ scores, `min_similarity`)
→ write (`_write`: PEFT adapter folders and `crosslora_report.json`, moved into place when complete).
`_run` drives the chunks. The report: its types (`report`), as text (`report_text`) and as
heat maps (`report_plot`). `python -m crosslora_jax.transfer` runs the command.
"""

from crosslora_jax.transfer._options import TransferOptions
from crosslora_jax.transfer._run import TransferResult, run_transfer
from crosslora_jax.transfer._subspaces import SubspaceStats, weight_subspaces
from crosslora_jax.transfer._write import report_for, transfer
from crosslora_jax.transfer.report import ModuleReport, TransferReport

__all__ = [
    "ModuleReport",
    "SubspaceStats",
    "TransferOptions",
    "TransferReport",
    "TransferResult",
    "report_for",
    "run_transfer",
    "transfer",
    "weight_subspaces",
]
