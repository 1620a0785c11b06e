"""crosslora_jax: move a LoRA adapter to a different base model, without data or training.

Public API:
- `transfer(source_model, target_model, adapters, output, options)`: the whole job, files in
  and PEFT adapter folders out (what `python -m crosslora_jax.transfer` runs); returns one
  `TransferReport` per adapter (`ModuleReport` per target module; `to_json()` is the
  `crosslora_report.json` written beside the adapter).
- `TransferOptions`, `SvdSettings`: how to transfer.
- `read_model_config`, `Checkpoint`, `read_adapter`: lazy readers of HF models and adapters.
- `load_weight_stacks`, `load_lora_stacks`, `save_lora_stacks`: stacked [L, ...] pytrees of
  base weights and LoRA factors, for the caller's own JAX code (see `crosslora_jax.io.stacks`).
- `truncated_svd`, `transfer_stack`, `truncate_stack`, `align`, `similarity`, `layer_map`: the pure ops, jittable
  inside a caller's own computation.
- `distill(source_model, target_model, adapter, output, options)`, `DistillOptions`: a transfer
  refined by distillation against the source model on text it samples itself (what
  `python -m crosslora_jax.distill` runs); its report has a `distill` section.
- `Progress`: what `transfer(progress=...)` reports each layer chunk to (subclass it to watch a run).
- `enable_compilation_cache(cache_dir=None)`: keep XLA's compiled programs under `cache_dir/xla`, by default
  the user's cache folder (process-global; the CLI turns it on, the library never does by itself).
- `CrossLoraError` and its subclasses: one per class of bad input.
"""

from crosslora_jax._errors import (
    AdapterError,
    CheckpointError,
    ConfigError,
    CrossLoraError,
    OptionsError,
    OutputError,
    PromptsError,
    TokenizerError,
    TransferError,
)
from crosslora_jax._progress import Progress
from crosslora_jax._xla_cache import enable_compilation_cache
from crosslora_jax.distillation import DistillOptions, distill
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.peft_adapter import LoraAdapter, read_adapter, write_adapter
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.io.stacks import LoraStack, load_lora_stacks, load_weight_stacks, save_lora_stacks
from crosslora_jax.ops import (
    METHODS,
    Diagnostics,
    Subspace,
    SvdSettings,
    align,
    layer_map,
    similarity,
    transfer_stack,
    truncate_stack,
    truncated_svd,
)
from crosslora_jax.transfer import TransferOptions, run_transfer, transfer
from crosslora_jax.transfer.report import ModuleReport, TransferReport

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "AdapterError",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "CrossLoraError",
    "Diagnostics",
    "DistillOptions",
    "LoraAdapter",
    "LoraStack",
    "ModelConfig",
    "ModuleReport",
    "OptionsError",
    "OutputError",
    "Progress",
    "PromptsError",
    "Subspace",
    "SvdSettings",
    "TokenizerError",
    "TransferError",
    "TransferOptions",
    "TransferReport",
    "align",
    "distill",
    "enable_compilation_cache",
    "layer_map",
    "load_lora_stacks",
    "load_weight_stacks",
    "read_adapter",
    "read_model_config",
    "run_transfer",
    "save_lora_stacks",
    "similarity",
    "transfer",
    "transfer_stack",
    "truncate_stack",
    "truncated_svd",
    "write_adapter",
]
