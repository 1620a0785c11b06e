"""The canonical parameter pytree of the evaluator, and its conversion from/to HF tensor names.

Layout (float32, or matrices in a narrower `dtype` on request; HF weight orientation W [out, in];
L layers, V vocab, D hidden):

    {"embed": [V, D], "norm": [D], "lm_head": [V, D] (only when untied),
     "layers": {"q": [L, H·hd, D], "k", "v": [L, KV·hd, D], "o": [L, D, H·hd],
                "gate", "up": [L, I, D], "down": [L, D, I],
                "<role>_bias": [L, out] for roles with a bias,
                "<norm name>": [L, D] per block norm, "q_norm", "k_norm": [L, hd] (qk-norm rows)}}

The HF names of these keys come from the architecture table, `ArchSpec.tensor_names`; the roles
of a fused module (phi3's qkv_proj, gate_up_proj) are its row blocks (`ArchSpec.row_ranges`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crosslora_jax.arch import ARCHITECTURES, Dims, RowRange, TensorKey
from crosslora_jax.eval._spec import ModelSpec
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.peft_adapter import read_adapter
from crosslora_jax.io.safetensors_checkpoint import Checkpoint

Params = dict[str, object]


def hf_names(spec: ModelSpec) -> dict[TensorKey, str]:
    """(canonical key, layer or None) -> HF tensor name, for every tensor the model has (the roles
    of a fused module share a name: `row_ranges`)."""
    arch = ARCHITECTURES[spec.model_type]
    return arch.tensor_names(spec.num_layers, tied=spec.tied, biases=spec.biases)


def row_ranges(spec: ModelSpec) -> dict[str, RowRange]:
    """Canonical key (role or "<role>_bias") -> its rows in a fused module's tensor; others absent."""
    dims = Dims(hidden=spec.hidden, inter=spec.inter, heads=spec.heads, kv_heads=spec.kv_heads, head_dim=spec.head_dim)
    rows = ARCHITECTURES[spec.model_type].row_ranges(dims)
    return {**rows, **{f"{role}_bias": r for role, r in rows.items()}}


def _by_tensor(spec: ModelSpec) -> dict[str, list[TensorKey]]:
    """HF tensor name -> the canonical keys it holds (several for a fused module), in row order."""
    out: dict[str, list[TensorKey]] = {}
    for key, name in hf_names(spec).items():
        out.setdefault(name, []).append(key)
    rows = row_ranges(spec)
    return {name: sorted(keys, key=lambda k: rows.get(k[0], (0, 0))) for name, keys in out.items()}


def from_hf(spec: ModelSpec, read: object, dtype: Any = np.float32) -> Params:
    """Canonical params from `read(hf_name) -> np.ndarray` (each tensor read once; a fused module
    split into its roles' rows); per-layer tensors stacked on axis 0. Weight matrices
    (projections, embeddings, head) are stored in `dtype` as each is read (host memory of the
    narrow copy only); vectors (norms, biases) stay float32."""
    params: Params = {}
    stacks: dict[str, list[np.ndarray]] = {}
    rows = row_ranges(spec)
    for name, keys in _by_tensor(spec).items():
        value = np.asarray(read(name), np.float32)  # type: ignore[operator]
        for key, layer in keys:
            part = value[slice(*rows[key])] if key in rows else value
            part = part.astype(dtype) if part.ndim >= 2 else part
            if layer is None:
                params[key] = part
            else:
                stacks.setdefault(key, []).append(part)
    params["layers"] = {key: np.stack(values) for key, values in stacks.items()}
    return params


def to_hf(spec: ModelSpec, params: Mapping[str, object]) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array (a fused module's roles stacked in row order); the inverse
    of `from_hf`."""
    layers = params["layers"]
    out = {}
    for name, keys in _by_tensor(spec).items():
        parts = [params[key] if layer is None else layers[key][layer] for key, layer in keys]  # type: ignore[index]
        out[name] = np.concatenate([np.asarray(p, np.float32) for p in parts])
    return out


def load_params(
    config: ModelConfig, spec: ModelSpec, adapter: Path | str | None = None, dtype: Any = np.float32
) -> Params:
    """Read a model's weights through `Checkpoint`, with a PEFT LoRA merged in: W += γ·B·A (in
    float32, then stored in `dtype` with the other matrices)."""
    ckpt = Checkpoint(config.folder)
    params = from_hf(spec, ckpt.read_f32, dtype)
    if adapter is not None:
        lora = read_adapter(adapter, config)
        layers = params["layers"]
        for (role, layer), module in lora.modules.items():
            a, b = lora.read_factors([module])  # [1, k, n], [1, m, k]
            delta = lora.scale(module) * (b[0].astype(np.float64) @ a[0].astype(np.float64))
            merged = np.asarray(layers[role][layer], np.float32) + delta.astype(np.float32)  # type: ignore[index]
            layers[role][layer] = merged.astype(dtype)  # type: ignore[index]
    return params
