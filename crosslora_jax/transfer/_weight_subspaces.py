"""Truncated SVDs of one role's base weights at a chunk of layers, sharded over the device mesh.

Each process reads only the rows its own devices hold, in the weights' stored dtype; the SVD
widens them on the device and flags layers holding NaN/Inf, which become a `CheckpointError`
naming the file and tensor. Every layer's SVD comes with its a-posteriori check (`SvdCheck`);
a gram layer the check flags is recomputed with the exact engine in a second pass over those
layers only (so the vmapped program never runs both routes), and its route says so. No caching
here: the pipeline decides what to compute.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from crosslora_jax import _mesh
from crosslora_jax._errors import CheckpointError
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops.svd import Subspace, SvdSettings, checked_truncated_svd, residual_tolerance, route
from crosslora_jax.transfer.report import SvdQuality

FALLBACK = "exact"  # the engine a flagged gram layer is recomputed with


@functools.cache
def _sharded_svd(settings: SvdSettings) -> Callable:
    return _mesh.sharded_jit(functools.partial(checked_truncated_svd, settings=settings))


@dataclasses.dataclass(frozen=True)
class ComputedSubspaces:
    """Host arrays [len(layers), ...] of one role's subspaces, each layer's `SvdQuality`, and
    what the call spent: seconds reading weights and layers recomputed by the fallback."""

    subspace: Subspace
    quality: tuple[SvdQuality, ...]
    read_seconds: float
    fallbacks: int


def compute_subspaces(
    model: ModelConfig, ckpt: Checkpoint, role: str, layers: Sequence[int], settings: SvdSettings
) -> ComputedSubspaces:
    """`role`'s subspaces at `layers` (distinct); the rest of the call beyond reading is the SVD."""
    names = [model.arch.weight_name(role, layer) for layer in layers]
    role_rows = model.row_ranges.get(role)  # a fused module's tensor: only this role's rows are read
    m, n = model.shapes[role]
    read_seconds = 0.0

    def run(settings: SvdSettings, rows: Sequence[int]) -> tuple[Subspace, list[np.ndarray]]:
        # gram works on the wide orientation (d ≤ N) anyway; handing it Wᵀ of tall roles lets
        # gate/up and down share one compiled program per model instead of compiling two.
        flip = settings.engine == "gram" and m > n

        def read(positions: Sequence[int]) -> np.ndarray:
            nonlocal read_seconds
            started = time.perf_counter()
            out = ckpt.read_stack_stored([names[rows[p]] for p in positions], role_rows)
            read_seconds += time.perf_counter() - started
            return np.ascontiguousarray(out.swapaxes(1, 2)) if flip else out

        w = _mesh.place_stack(len(rows), (n, m) if flip else (m, n), read)
        ids = _mesh.shard_layers(np.asarray([layers[r] for r in rows], np.int32))
        sub, finite, check = _sharded_svd(settings)(w, ids)
        for row in np.flatnonzero(~_mesh.to_host(finite, len(rows))):
            name = names[rows[row]]
            raise CheckpointError(ckpt.file_of(name), f"tensor {name!r} contains NaN or Inf")
        u, s, v, energy = (_mesh.to_host(x, len(rows)) for x in sub)
        return (Subspace(v, s, u, energy) if flip else Subspace(u, s, v, energy)), [
            _mesh.to_host(x, len(rows)) for x in check
        ]

    first = route(settings, m, n)
    sub, figures = run(settings, range(len(layers)))
    residual, gap, bound, flagged = (np.array(x) for x in figures)  # writable copies
    routes = [first] * len(layers)
    redo = np.flatnonzero(flagged) if settings.engine == "gram" else np.zeros(0, int)
    if redo.size:  # the same on every process: to_host gathers the flags everywhere
        exact = dataclasses.replace(settings, engine=FALLBACK)
        again, (residual2, gap2, bound2, flagged2) = run(exact, [int(r) for r in redo])
        sub = Subspace(*(np.array(x) for x in sub))
        for x, y in zip(sub, again, strict=True):
            x[redo] = y
        for arrays, new in ((residual, residual2), (gap, gap2), (bound, bound2), (flagged, flagged2)):
            arrays[redo] = new
        for r in redo:
            routes[r] = f"{first}→{FALLBACK}"
    tolerance = residual_tolerance(m, n)
    still = [layers[r] for r in np.flatnonzero(flagged)]
    if still:  # exact itself, or randomized (no fallback: it is the user's fast, inexact choice)
        logging.warning("role %s layers %s: SVD residual above %.1e·σ₁ (not backward-stable) with route %s; "
                        "see the report's svd figures", role, still, tolerance, routes[layers.index(still[0])])  # fmt: skip
    quality = tuple(
        SvdQuality(routes[r], float(residual[r]), float(gap[r]), float(bound[r]), bool(flagged[r]))
        for r in range(len(layers))
    )
    return ComputedSubspaces(sub, quality, read_seconds, int(redo.size))
