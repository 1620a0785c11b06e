"""Where distillation's arrays live on the device mesh (one 'data' axis over every device of every
process, `_mesh.data_mesh`):

- batches: rows split over the axis, padded with zero rows to a multiple of the device count
  (mask 0: every objective is a mean over masked positions, so padding changes none);
- frozen weights (both base models, the source adapter, the student's fixed tensors): each matrix
  sharded along one axis, FSDP-style (`_mesh.fsdp_sharding`); the model gathers one layer at a
  time (`layer_sharding`), so a device holds 1/D of the weights plus one layer;
- trainables and optimizer state: replicated (adapter-sized).

Every process passes the same host values; each copies only its own devices' shards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from crosslora_jax import _mesh

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Placement:
    mesh: Mesh

    @property
    def replicated(self) -> NamedSharding:
        return _mesh.replicated(self.mesh)

    @property
    def devices(self) -> int:
        return self.mesh.size

    def batch(self, batch: T) -> T:
        """A NamedTuple of host arrays [N, ...] (inputs, targets, mask, …; None fields stay None)
        → rows sharded over the axis."""
        (axis,) = self.mesh.axis_names
        rows = NamedSharding(self.mesh, PartitionSpec(axis))
        fields: list[jax.Array | None] = []
        for x in batch:  # type: ignore[attr-defined]
            if x is None:
                fields.append(None)
                continue
            x = np.asarray(x)
            fields.append(_mesh.place(_mesh.pad_rows(x, _mesh.padded_length(x.shape[0], self.mesh)), rows))
        return type(batch)(*fields)  # type: ignore[call-arg]

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A model's canonical params (embeddings, final norm, head, and "layers" stacks), FSDP-sharded."""
        out = {key: self._fsdp(value, stacked=False) for key, value in params.items() if key != "layers"}
        out["layers"] = self.stacks(params["layers"])
        return out

    def stacks(self, tree: T) -> T:
        """A pytree of per-layer stacks [L, ...] (LoRA factors, the student's fixed tensors),
        FSDP-sharded within each layer."""
        return jax.tree.map(lambda x: self._fsdp(x, stacked=True), tree)

    def replicate(self, tree: T) -> T:
        return jax.tree.map(lambda x: _mesh.place(np.asarray(x), self.replicated), tree)

    def init_optimizer(self, opt: optax.GradientTransformation, trainable: Any) -> optax.OptState:
        """`opt.init` with every state array replicated (counters included)."""
        return jax.jit(opt.init, out_shardings=self.replicated)(trainable)

    def _fsdp(self, x: Any, *, stacked: bool) -> jax.Array:
        x = np.asarray(x)
        return _mesh.place(x, _mesh.fsdp_sharding(x.shape, self.mesh, stacked=stacked))
