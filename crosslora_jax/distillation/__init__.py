"""Distillation refinement of a moved adapter (docs/method.md, "Distillation").

Public API:
- `distill(source_model, target_model, adapter, output, options)`: what `python -m
  crosslora_jax.distill` runs; returns the `TransferReport` of the init transfer with its
  `distill` section (settings, loss curve, held-out objective before and after, tokens, time).
- `DistillOptions`: every setting, validated on construction.
"""

from crosslora_jax.distillation._options import DistillOptions
from crosslora_jax.distillation._run import distill

__all__ = ["DistillOptions", "distill"]
