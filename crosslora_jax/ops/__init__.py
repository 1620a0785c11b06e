"""Pure array functions of the transfer: no I/O, no flags, usable inside a caller's jit."""

from crosslora_jax.ops.layer_map import layer_map, resolve_layer_map
from crosslora_jax.ops.svd import Subspace, SvdSettings, truncated_svd
from crosslora_jax.ops.transfer import (
    METHODS,
    Diagnostics,
    align,
    similarity,
    transfer_layer,
    transfer_stack,
    truncate_stack,
)

__all__ = [
    "METHODS",
    "Diagnostics",
    "Subspace",
    "SvdSettings",
    "align",
    "layer_map",
    "resolve_layer_map",
    "similarity",
    "transfer_layer",
    "transfer_stack",
    "truncate_stack",
    "truncated_svd",
]
