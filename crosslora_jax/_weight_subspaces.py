"""Truncated SVDs of one role's base weights at a chunk of layers, sharded over the device mesh.

Each process reads only the rows its own devices hold, in the weights' stored dtype; the SVD
widens them on the device and flags layers holding NaN/Inf, which become a `CheckpointError`
naming the file and tensor. No caching here: the pipeline decides what to compute.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence

import numpy as np

from crosslora_jax import _mesh
from crosslora_jax._errors import CheckpointError
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops.svd import Subspace, SvdSettings, checked_truncated_svd


@functools.cache
def _sharded_svd(settings: SvdSettings) -> Callable:
    return _mesh.sharded_jit(functools.partial(checked_truncated_svd, settings=settings))


def compute_subspaces(
    model: ModelConfig, ckpt: Checkpoint, role: str, layers: Sequence[int], settings: SvdSettings
) -> tuple[Subspace, float]:
    """Host arrays [len(layers), ...] of `role`'s subspaces at `layers` (distinct), and the
    seconds spent reading the weights (the rest of the call is the SVD)."""
    names = [model.arch.weight_name(role, layer) for layer in layers]
    role_rows = model.row_ranges.get(role)  # a fused module's tensor: only this role's rows are read
    m, n = model.shapes[role]
    # gram works on the wide orientation (d ≤ N) anyway; handing it Wᵀ of tall roles lets
    # gate/up and down share one compiled program per model instead of compiling two.
    flip = settings.engine == "gram" and m > n
    read_seconds = 0.0

    def read(rows: Sequence[int]) -> np.ndarray:
        nonlocal read_seconds
        started = time.perf_counter()
        out = ckpt.read_stack_stored([names[r] for r in rows], role_rows)
        read_seconds += time.perf_counter() - started
        return np.ascontiguousarray(out.swapaxes(1, 2)) if flip else out

    w = _mesh.place_stack(len(layers), (n, m) if flip else (m, n), read)
    ids = _mesh.shard_layers(np.asarray(layers, np.int32))
    sub, finite = _sharded_svd(settings)(w, ids)
    for row in np.flatnonzero(~_mesh.to_host(finite, len(layers))):
        raise CheckpointError(ckpt.file_of(names[row]), f"tensor {names[row]!r} contains NaN or Inf")
    u, s, v, energy = (_mesh.to_host(x, len(layers)) for x in sub)
    return (Subspace(v, s, u, energy) if flip else Subspace(u, s, v, energy)), read_seconds
