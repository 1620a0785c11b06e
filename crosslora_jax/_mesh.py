"""The device meshes: one axis over every device of every process.

The transfer pipeline's axis is 'layers': a stack of L layers is padded (by repeating its last
layer) to a multiple of the device count and sharded on its leading axis. Each process builds
only the shards its own devices hold (`place_stack` reads through a callback), and results come
back to every process's host with the padding cut off (`to_host`).

Distillation's axis is 'data' (`data_mesh`): batches are split over it, and frozen weights are
stored sharded over the same devices, FSDP-style (`fsdp_sharding`), each model layer gathered
whole only while it computes. `place` puts a host array that every process holds on any sharding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LAYER_AXIS = "layers"
DATA_AXIS = "data"


@functools.cache
def layer_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (LAYER_AXIS,))


@functools.cache
def data_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def fsdp_sharding(shape: Sequence[int], mesh: Mesh, *, stacked: bool = False) -> NamedSharding:
    """A matrix's sharding over the mesh's one axis: along its largest axis that the device count
    divides; vectors, scalars and matrices with no such axis are replicated. `stacked`: a stack of
    per-layer arrays [L, ...], judged per layer (the layer axis is never split: the layer loop
    slices it)."""
    (axis_name,) = mesh.axis_names
    first = 1 if stacked else 0
    if len(shape) - first < 2:
        return replicated(mesh)
    fits = [i for i in range(first, len(shape)) if shape[i] % mesh.size == 0]
    if not fits or mesh.size == 1:
        return replicated(mesh)
    axis = max(fits, key=lambda i: (shape[i], -i))  # the largest; the first of equals
    spec = [None] * len(shape)
    spec[axis] = axis_name
    return NamedSharding(mesh, PartitionSpec(*spec))


def place(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A host array that every process holds, on `sharding` (each process copies only the shards
    of its own devices)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def layer_sharding(mesh: Mesh | None = None) -> NamedSharding:
    return NamedSharding(mesh or layer_mesh(), PartitionSpec(LAYER_AXIS))


def padded_length(n: int, mesh: Mesh | None = None) -> int:
    """`n` rounded up to a multiple of the mesh's device count (the layer mesh's by default)."""
    d = (mesh or layer_mesh()).size
    return -(-n // d) * d


def pad_rows(x: np.ndarray, rows: int, fill: np.ndarray | None = None) -> np.ndarray:
    """`x` [N, ...] grown to `rows` rows by copies of the row `fill` (zeros when None); `x` itself
    when it has that many already."""
    pad = rows - x.shape[0]
    if pad <= 0:
        return x
    extra = np.zeros((pad, *x.shape[1:]), x.dtype) if fill is None else np.repeat(fill[None], pad, axis=0)
    return np.concatenate([x, extra.astype(x.dtype, copy=False)])


def place_stack(
    count: int,
    row_shape: Sequence[int],
    read: Callable[[Sequence[int]], np.ndarray],
    mesh: Mesh | None = None,
) -> jax.Array:
    """A [padded(count), ...] array sharded over layers; `read(positions)` gives host rows.

    Only the rows of this process's devices are read; padding rows repeat row `count - 1`.
    """
    sharding = layer_sharding(mesh)
    total = padded_length(count, mesh)
    shape = (total, *row_shape)

    def shard(index: tuple[slice, ...]) -> np.ndarray:
        rows = range(*index[0].indices(total))
        return read([min(r, count - 1) for r in rows])

    return jax.make_array_from_callback(shape, sharding, shard)


def shard_layers(x: np.ndarray, mesh: Mesh | None = None) -> jax.Array:
    """Place a host stack [L, ...] that every process already holds."""
    return place_stack(x.shape[0], x.shape[1:], lambda rows: x[np.asarray(rows)], mesh)


def to_host(x: jax.Array, count: int) -> np.ndarray:
    """The first `count` rows of a layer-sharded array, on every process's host."""
    if not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)[:count]


def sharded_jit(fn: Callable, mesh: Mesh | None = None) -> Callable:
    """`fn` compiled with every input and output sharded over the layer axis."""
    sharding = layer_sharding(mesh)
    return jax.jit(fn, in_shardings=sharding, out_shardings=sharding)
