"""Which source layer feeds each target layer when the two models' depths differ."""

from __future__ import annotations

import typing
from typing import Literal

from crosslora_jax._options import check_choice

LayerMapKind = Literal["auto", "index", "linear"]
LAYER_MAPS: tuple[str, ...] = typing.get_args(LayerMapKind)


def resolve_layer_map(kind: LayerMapKind, source_layers: int, target_layers: int) -> Literal["index", "linear"]:
    check_choice("layer_map", kind, LAYER_MAPS)
    if kind == "auto":
        return "index" if source_layers == target_layers else "linear"
    return kind


def layer_map(kind: LayerMapKind, source_layers: int, target_layers: int) -> list[int | None]:
    """For each target layer j, its source layer i, or None where `index` has no source.

    `linear`: i = ⌊j·(L_s−1)/(L_t−1) + ½⌋, computed in integers so halves round up exactly.
    """
    kind = resolve_layer_map(kind, source_layers, target_layers)
    if kind == "index":
        return [j if j < source_layers else None for j in range(target_layers)]
    if target_layers == 1:
        return [0]
    num, den = source_layers - 1, target_layers - 1
    return [(2 * j * num + den) // (2 * den) for j in range(target_layers)]
