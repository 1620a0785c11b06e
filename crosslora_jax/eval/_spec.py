"""`model_spec`: a config and its architecture row (`crosslora_jax.arch`) become a `ModelSpec`.

A `ModelSpec` is hashable (static under `jit`) and holds every number the forward pass needs:
dimensions, norm style, activation, RoPE frequencies, per-layer attention windows, softcaps.
What differs between architectures is read from `ArchSpec`; config fields that change the
math and are not implemented are refused by name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from crosslora_jax._errors import ConfigError
from crosslora_jax.arch import ArchSpec, BlockNorms, model_dims
from crosslora_jax.io.hf_config import CONFIG_FILE, ModelConfig

ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu")
_ROPE_TYPES = ("default", "linear", "llama3")
_LAYER_TYPES = ("full_attention", "sliding_attention")
# Fields that would change the math if set to anything but these values.
_FIELDS_WITH_ONLY_DEFAULT: Mapping[str, tuple[Any, ...]] = {
    "partial_rotary_factor": (None, 1, 1.0),
    "use_bidirectional_attention": (None, False),
    "attention_chunk_size": (None,),
    "embedding_multiplier": (None, 1, 1.0),
    "residual_multiplier": (None, 1, 1.0),
    "logits_scaling": (None, 1, 1.0),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything static about one model's forward pass (hashable; a `jit` static argument)."""

    model_type: str
    vocab: int
    hidden: int
    inter: int
    num_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    norm_eps: float
    norm_offset: float
    embed_scale: bool
    activation: str
    block_norms: BlockNorms
    biases: tuple[str, ...]  # roles with a bias
    qk_norm: bool
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    inv_freqs: tuple[tuple[float, ...], ...]  # per layer: RoPE inverse frequencies, head_dim / 2 of them
    windows: tuple[int, ...]  # per layer: sliding window size, 0 = full causal attention
    tied: bool
    max_positions: int

    @property
    def norm_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.block_norms if n is not None)


def model_spec(config: ModelConfig) -> ModelSpec:
    """The forward-pass spec of a model read by `read_model_config`; refuses what it cannot compute."""
    raw = config.raw
    where = config.folder / CONFIG_FILE
    arch = config.arch
    for field, allowed in _FIELDS_WITH_ONLY_DEFAULT.items():
        if raw.get(field) not in allowed:
            raise ConfigError(where, f"field {field!r}={raw[field]!r} is not implemented by the evaluator")
    dims = model_dims(raw)
    activation = raw.get(arch.activation_field) or arch.default_activation
    activation = arch.legacy_activations.get(activation, activation)
    if activation not in ACTIVATIONS:
        raise ConfigError(where, f"field {arch.activation_field!r}={activation!r} is not implemented by the evaluator")
    if arch.query_pre_attn_scalar:
        attn_scale = float(raw.get("query_pre_attn_scalar") or dims.head_dim) ** -0.5
    else:
        attn_scale = dims.head_dim**-0.5
    sliding = _sliding_layers(where, raw, arch, config.num_layers)
    window = raw.get("sliding_window")
    rope = _rope_by_layer_kind(where, raw, arch, dims.head_dim)
    vocab = raw.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        raise ConfigError(where, f"field 'vocab_size' must be a positive integer, found {vocab!r}")
    return ModelSpec(
        model_type=config.model_type,
        vocab=vocab,
        hidden=dims.hidden,
        inter=dims.inter,
        num_layers=config.num_layers,
        heads=dims.heads,
        kv_heads=dims.kv_heads,
        head_dim=dims.head_dim,
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        norm_offset=arch.norm_offset,
        embed_scale=arch.embed_scale,
        activation=activation,
        block_norms=arch.block_norms,
        biases=arch.biases(raw),
        qk_norm=arch.qk_norm,
        attn_scale=attn_scale,
        attn_softcap=_optional_float(raw, "attn_logit_softcapping") if arch.attn_softcap else None,
        final_softcap=_optional_float(raw, "final_logit_softcapping") if arch.final_softcap else None,
        inv_freqs=tuple(rope[s] for s in sliding),
        windows=tuple(int(window) if s and window else 0 for s in sliding),
        tied=arch.tied(raw),
        max_positions=int(raw.get("max_position_embeddings") or 2048),
    )


def _optional_float(raw: Mapping[str, Any], field: str) -> float | None:
    value = raw.get(field)
    return None if value is None else float(value)


def _rope_by_layer_kind(
    where: object, raw: Mapping[str, Any], arch: ArchSpec, head_dim: int
) -> dict[bool, tuple[float, ...]]:
    """RoPE inverse frequencies [head_dim/2] of full (False) and sliding (True) layers, from
    `rope_theta`/`rope_scaling` (4.x) or `rope_parameters` (5.x, per layer type for rows with
    `local_rope_theta_field`: there sliding layers rotate with their own unscaled theta)."""
    flat: dict[str, Any] = {}
    per_type: dict[str, dict[str, Any]] = {}
    for field in ("rope_scaling", "rope_parameters"):
        value = raw.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ConfigError(where, f"field {field!r} must be an object")
        if not any(isinstance(v, dict) for v in value.values()):
            flat.update(value)
            continue
        if arch.local_rope_theta_field is None:
            raise ConfigError(where, f"per-layer-type {field!r} is not implemented by the evaluator")
        for kind, params in value.items():
            if kind not in _LAYER_TYPES or not isinstance(params, dict):
                raise ConfigError(where, f"field {field!r}: {kind!r} is not a layer type with RoPE parameters")
            per_type.setdefault(kind, {}).update(params)
    full = {
        "rope_theta": raw.get("rope_theta") or arch.default_rope_theta,
        **flat,
        **per_type.get("full_attention", {}),
    }
    if arch.local_rope_theta_field is None:
        local = full
    else:
        theta = raw.get(arch.local_rope_theta_field) or arch.default_local_rope_theta
        local = {"rope_type": "default", "rope_theta": theta, **per_type.get("sliding_attention", {})}
    field = " / ".join(f for f in ("rope_scaling", "rope_parameters") if raw.get(f) is not None) or "rope_theta"
    return {
        False: tuple(float(f) for f in _inv_freq(where, raw, full, head_dim, field)),
        True: tuple(float(f) for f in _inv_freq(where, raw, local, head_dim, field)),
    }


def _inv_freq(
    where: object, raw: Mapping[str, Any], params: Mapping[str, Any], head_dim: int, field: str
) -> np.ndarray:
    """RoPE inverse frequencies [head_dim/2] of one set of RoPE parameters (from config `field`)."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in _ROPE_TYPES:  # e.g. phi3's longrope (or "su", its older name)
        raise ConfigError(
            where,
            f"field {field!r}: RoPE type {rope_type!r} is not implemented by the evaluator "
            f"(supported: {', '.join(_ROPE_TYPES)})",
        )
    if params.get("partial_rotary_factor") not in (None, 1, 1.0):  # transformers 5 keeps it here too
        factor = params["partial_rotary_factor"]
        raise ConfigError(
            where, f"field {field!r}: 'partial_rotary_factor'={factor!r} is not implemented by the evaluator"
        )
    theta = float(params["rope_theta"])
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64) / head_dim)
    if rope_type == "linear":
        return inv_freq / float(params["factor"])
    if rope_type == "llama3":
        factor = float(params["factor"])
        low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old_len = float(params.get("original_max_position_embeddings") or raw["max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return np.where(medium, smoothed, scaled)
    return inv_freq


def _sliding_layers(where: object, raw: Mapping[str, Any], arch: ArchSpec, num_layers: int) -> list[bool]:
    """Per layer: whether it is a sliding-attention layer, following transformers' rules."""
    layer_types = raw.get("layer_types")
    if layer_types is not None:
        if not isinstance(layer_types, list) or len(layer_types) != num_layers:
            raise ConfigError(where, f"field 'layer_types' must list {num_layers} layer types")
        unknown = sorted(set(layer_types) - set(_LAYER_TYPES))
        if unknown:
            raise ConfigError(where, f"layer type {unknown[0]!r} is not implemented by the evaluator")
        return [t == "sliding_attention" for t in layer_types]
    if arch.window_rule == "all":
        return [True] * num_layers
    if arch.window_rule == "alternate":
        return [i % 2 == 0 for i in range(num_layers)]
    if arch.window_rule == "pattern":  # every pattern-th layer is global (transformers' default 6)
        pattern = raw.get("sliding_window_pattern") or 6
        if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern <= 0:
            raise ConfigError(where, f"field 'sliding_window_pattern' must be a positive integer, found {pattern!r}")
        return [(i + 1) % pattern != 0 for i in range(num_layers)]
    if arch.window_rule == "qwen" and raw.get("use_sliding_window"):
        first = int(raw.get("max_window_layers") or 0)
        return [i >= first for i in range(num_layers)]
    return [False] * num_layers
