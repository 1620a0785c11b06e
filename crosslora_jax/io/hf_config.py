"""Read an HF `config.json` into the facts the transfer needs: architecture, depth, shapes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crosslora_jax._errors import ConfigError
from crosslora_jax.arch import (
    ARCHITECTURES,
    REFUSED_ARCHITECTURES,
    REFUSED_CONFIG_FIELDS,
    ArchSpec,
    RowRange,
    model_dims,
    role_shapes,
)
from crosslora_jax.io._json import read_json_object, require_dir

CONFIG_FILE = "config.json"
_REQUIRED_INT_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
_OPTIONAL_INT_FIELDS = ("num_key_value_heads", "head_dim")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One base model as described by its config: architecture, depth, per-role (m, n), and where
    the roles of a fused module (phi3's qkv_proj) sit in its weight."""

    folder: Path
    model_type: str
    arch: ArchSpec
    num_layers: int
    shapes: Mapping[str, tuple[int, int]]
    raw: Mapping[str, Any]
    name_or_path: str
    row_ranges: Mapping[str, RowRange] = dataclasses.field(default_factory=dict)  # fused roles only

    def stored_shape(self, role: str) -> tuple[int, int]:
        """Shape of the tensor that holds `role`'s weight: its own, or its fused module's."""
        return sum(self.shapes[r][0] for r in self.arch.fused_roles(role)), self.shapes[role][1]


def read_model_config(folder: Path | str) -> ModelConfig:
    folder = require_dir(Path(folder), ConfigError, "model")
    path = folder / CONFIG_FILE
    raw = read_json_object(path, ConfigError)
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise ConfigError(path, "missing string field 'model_type'")
    if model_type in REFUSED_ARCHITECTURES:
        raise ConfigError(path, f"model_type {model_type!r} is not supported: {REFUSED_ARCHITECTURES[model_type]}")
    if model_type not in ARCHITECTURES:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ConfigError(path, f"unknown model_type {model_type!r}; supported: {known}")
    for field, why in REFUSED_CONFIG_FIELDS.items():
        if raw.get(field):
            raise ConfigError(path, f"field {field!r} is set: {why}")
    for field in _REQUIRED_INT_FIELDS:
        _check_positive_int(path, raw, field, required=True)
    for field in _OPTIONAL_INT_FIELDS:
        _check_positive_int(path, raw, field, required=False)
    heads = raw["num_attention_heads"]
    kv_heads = raw.get("num_key_value_heads") or heads
    if heads % kv_heads:
        raise ConfigError(path, f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
    if not raw.get("head_dim") and raw["hidden_size"] % heads:
        raise ConfigError(path, "hidden_size is not a multiple of num_attention_heads and no head_dim is given")
    arch = ARCHITECTURES[model_type]
    return ModelConfig(
        folder=folder,
        model_type=model_type,
        arch=arch,
        num_layers=raw["num_hidden_layers"],
        shapes=role_shapes(raw),
        raw=raw,
        name_or_path=str(raw.get("_name_or_path") or folder.resolve()),
        row_ranges=arch.row_ranges(model_dims(raw)),
    )


def _check_positive_int(path: Path, raw: Mapping[str, Any], field: str, *, required: bool) -> None:
    value = raw.get(field)
    if value is None and not required:
        return
    if value is None:
        raise ConfigError(path, f"missing field {field!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(path, f"field {field!r} must be a positive integer, found {value!r}")
