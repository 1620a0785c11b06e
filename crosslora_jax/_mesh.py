"""The device mesh the pipeline runs on: one axis, 'layers', over every device of every process.

A stack of L layers is padded (by repeating its last layer) to a multiple of the device count
and sharded on its leading axis. Each process builds only the shards its own devices hold
(`place_stack` reads through a callback), and results come back to every process's host with
the padding cut off (`to_host`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LAYER_AXIS = "layers"


@functools.cache
def layer_mesh() -> Mesh:
    return Mesh(np.asarray(jax.devices()), (LAYER_AXIS,))


def layer_sharding(mesh: Mesh | None = None) -> NamedSharding:
    return NamedSharding(mesh or layer_mesh(), PartitionSpec(LAYER_AXIS))


def padded_length(n: int, mesh: Mesh | None = None) -> int:
    d = (mesh or layer_mesh()).size
    return -(-n // d) * d


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
