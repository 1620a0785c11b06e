"""The device mesh the pipeline runs on: one axis, 'layers', over every visible device.

A stack of L layers is padded (by repeating its last layer) to a multiple of the device count
and sharded on its leading axis; the padding is cut off when results come back to the host.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
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


def shard_layers(x: np.ndarray, mesh: Mesh | None = None) -> jax.Array:
    """Place a host stack [L, ...] on the mesh, sharded over L (padded to the device count)."""
    pad = padded_length(x.shape[0], mesh) - x.shape[0]
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return jax.device_put(x, layer_sharding(mesh))
