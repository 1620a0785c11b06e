"""The canonical parameter pytree of the evaluator, and its conversion from/to HF tensor names.

Layout (float32, or matrices in a narrower `dtype` on request; HF weight orientation W [out, in];
L layers, V vocab, D hidden):

    {"embed": [V, D], "norm": [D], "lm_head": [V, D] (only when untied),
     "layers": {"q": [L, H·hd, D], "k", "v": [L, KV·hd, D], "o": [L, D, H·hd],
                "gate", "up": [L, I, D], "down": [L, D, I],
                "<role>_bias": [L, out] for roles with a bias,
                "<norm name>": [L, D] per block norm, "q_norm", "k_norm": [L, hd] (qk-norm rows)}}

The HF names of these keys come from the architecture table, `ArchSpec.tensor_names`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crosslora_jax.arch import ARCHITECTURES, TensorKey
from crosslora_jax.eval._spec import ModelSpec
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.peft_adapter import read_adapter
from crosslora_jax.io.safetensors_checkpoint import Checkpoint

Params = dict[str, object]


def hf_names(spec: ModelSpec) -> dict[TensorKey, str]:
    """(canonical key, layer or None) -> HF tensor name, for every tensor the model has."""
    arch = ARCHITECTURES[spec.model_type]
    return arch.tensor_names(spec.num_layers, tied=spec.tied, biases=spec.biases)


def from_hf(spec: ModelSpec, read: object, dtype: Any = np.float32) -> Params:
    """Canonical params from `read(hf_name) -> np.ndarray`; per-layer tensors stacked on axis 0.
    Weight matrices (projections, embeddings, head) are stored in `dtype` as each is read (host
    memory of the narrow copy only); vectors (norms, biases) stay float32."""
    params: Params = {}
    stacks: dict[str, list[np.ndarray]] = {}
    for (key, layer), name in hf_names(spec).items():
        value = np.asarray(read(name), np.float32)  # type: ignore[operator]
        value = value.astype(dtype) if value.ndim >= 2 else value
        if layer is None:
            params[key] = value
        else:
            stacks.setdefault(key, []).append(value)
    params["layers"] = {key: np.stack(values) for key, values in stacks.items()}
    return params


def to_hf(spec: ModelSpec, params: Mapping[str, object]) -> dict[str, np.ndarray]:
    """HF tensor name -> float32 array; the inverse of `from_hf`."""
    layers = params["layers"]
    out = {}
    for (key, layer), name in hf_names(spec).items():
        value = params[key] if layer is None else layers[key][layer]  # type: ignore[index]
        out[name] = np.asarray(value, np.float32)
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
