"""Distillation refinement of a moved adapter (docs/method.md, "Distillation").

Public API:
- `distill(source_model, target_model, adapter, output, options)`: what `python -m
  crosslora_jax.distill` runs; returns the `TransferReport` of the init transfer with its
  `distill` field, a `DistillReport` (settings, loss curve, held-out objective before and
  after, tokens, time; `to_json()` is the report file's `distill` section).
- `DistillOptions`: every setting, validated on construction (the init transfer's in `transfer`).
- `OBJECTIVES`: the `--kd` objectives by name, each with what it needs (`Objective`).
"""

from crosslora_jax.distillation._objectives import OBJECTIVES, Objective
from crosslora_jax.distillation._options import DistillOptions
from crosslora_jax.distillation._report import DistillReport
from crosslora_jax.distillation._run import distill

__all__ = ["OBJECTIVES", "DistillOptions", "DistillReport", "Objective", "distill"]
