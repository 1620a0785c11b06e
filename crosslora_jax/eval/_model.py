"""Causal-LM forward pass as pure functions of the canonical param pytree; `lax.scan` over layers.

Shapes: B batch, T tokens, D hidden, H query heads, KV key/value heads, G = H/KV, hd head_dim,
V vocab, L layers, k LoRA rank.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from crosslora_jax.eval._spec import ModelSpec

_HI = jax.lax.Precision.HIGHEST

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}

# Optional LoRA side path: role -> {"a": [L, k, n], "b": [L, m, k], "scale": [L]}; y += scale·(x Aᵀ) Bᵀ.
Lora = Mapping[str, Mapping[str, jax.Array]]


def rms_norm(x: jax.Array, w: jax.Array, eps: float, offset: float) -> jax.Array:
    """x [..., d] normalised over d, times (offset + w [d])."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y * (offset + w)


def _rope(x: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE of x [B, T, heads, hd] at positions 0..T-1."""
    t = jnp.arange(x.shape[1], dtype=jnp.float32)
    freqs = t[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, hd]
    cos, sin = jnp.cos(emb)[None, :, None, :], jnp.sin(emb)[None, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _linear(x: jax.Array, layer: Mapping[str, jax.Array], role: str, lora: Mapping[str, jax.Array] | None) -> jax.Array:
    """x [B, T, n] @ W [m, n]ᵀ (+ bias) (+ LoRA side path) -> [B, T, m]."""
    y = jnp.einsum("btn,mn->btm", x, layer[role], precision=_HI)
    if f"{role}_bias" in layer:
        y = y + layer[f"{role}_bias"]
    if lora is not None:
        xa = jnp.einsum("btn,kn->btk", x, lora["a"], precision=_HI)
        y = y + lora["scale"] * jnp.einsum("btk,mk->btm", xa, lora["b"], precision=_HI)
    return y


def _attention(
    spec: ModelSpec, x: jax.Array, layer: Mapping[str, jax.Array], window: jax.Array, inv_freq: jax.Array, lora: Lora
) -> jax.Array:
    """Causal (optionally sliding-window) grouped-query attention: x [B, T, D] -> [B, T, D];
    `window` 0 = full attention, `inv_freq` [hd/2] this layer's RoPE frequencies."""
    b, t, _ = x.shape
    groups = spec.heads // spec.kv_heads
    q = _linear(x, layer, "q", lora.get("q")).reshape(b, t, spec.heads, spec.head_dim)
    k = _linear(x, layer, "k", lora.get("k")).reshape(b, t, spec.kv_heads, spec.head_dim)
    v = _linear(x, layer, "v", lora.get("v")).reshape(b, t, spec.kv_heads, spec.head_dim)
    if spec.qk_norm:
        q = rms_norm(q, layer["q_norm"], spec.norm_eps, spec.norm_offset)
        k = rms_norm(k, layer["k_norm"], spec.norm_eps, spec.norm_offset)
    q, k = _rope(q, inv_freq), _rope(k, inv_freq)
    q = q.reshape(b, t, spec.kv_heads, groups, spec.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, precision=_HI) * spec.attn_scale
    if spec.attn_softcap is not None:
        scores = jnp.tanh(scores / spec.attn_softcap) * spec.attn_softcap
    qi, ki = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
    allowed = (ki <= qi) & ((window == 0) | (ki > qi - window))  # [T, T]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v, precision=_HI).reshape(b, t, spec.heads * spec.head_dim)
    return _linear(out, layer, "o", lora.get("o"))


def _mlp(spec: ModelSpec, x: jax.Array, layer: Mapping[str, jax.Array], lora: Lora) -> jax.Array:
    """Gated MLP: down(act(gate(x)) * up(x)); x [B, T, D] -> [B, T, D]."""
    act = _ACTIVATIONS[spec.activation]
    h = act(_linear(x, layer, "gate", lora.get("gate"))) * _linear(x, layer, "up", lora.get("up"))
    return _linear(h, layer, "down", lora.get("down"))


def _block(
    spec: ModelSpec, x: jax.Array, layer: Mapping[str, jax.Array], window: jax.Array, inv_freq: jax.Array, lora: Lora
) -> jax.Array:
    """One decoder layer; `spec.block_norms` says where the (pre, post) norms sit around each half."""
    pre_attn, post_attn, pre_mlp, post_mlp = spec.block_norms

    def norm(h: jax.Array, name: str | None) -> jax.Array:
        return h if name is None else rms_norm(h, layer[name], spec.norm_eps, spec.norm_offset)

    x = x + norm(_attention(spec, norm(x, pre_attn), layer, window, inv_freq, lora), post_attn)
    return x + norm(_mlp(spec, norm(x, pre_mlp), layer, lora), post_mlp)


def hidden_states(
    spec: ModelSpec, params: Mapping[str, object], tokens: jax.Array, lora: Lora | None = None
) -> jax.Array:
    """Final normed hidden states [B, T, D] of token ids [B, T]."""
    embed = params["embed"]
    x = jnp.take(embed, tokens, axis=0)  # type: ignore[arg-type]
    if spec.embed_scale:
        x = x * jnp.asarray(spec.hidden**0.5, jnp.float32)
    windows = jnp.asarray(spec.windows, jnp.int32)  # [L]
    inv_freqs = jnp.asarray(spec.inv_freqs, jnp.float32)  # [L, hd/2]

    def step(h: jax.Array, xs: tuple[Mapping[str, jax.Array], jax.Array, jax.Array, Lora]) -> tuple[jax.Array, None]:
        layer, window, inv_freq, layer_lora = xs
        return _block(spec, h, layer, window, inv_freq, layer_lora), None

    x, _ = jax.lax.scan(step, x, (params["layers"], windows, inv_freqs, lora or {}))
    return rms_norm(x, params["norm"], spec.norm_eps, spec.norm_offset)  # type: ignore[arg-type]


def logits(spec: ModelSpec, params: Mapping[str, object], tokens: jax.Array, lora: Lora | None = None) -> jax.Array:
    """Next-token logits [B, T, V] of token ids [B, T] (right padding is harmless: attention is causal)."""
    h = hidden_states(spec, params, tokens, lora)
    head = params["embed"] if spec.tied else params["lm_head"]
    out = jnp.einsum("btd,vd->btv", h, head, precision=_HI)
    if spec.final_softcap is not None:
        out = jnp.tanh(out / spec.final_softcap) * spec.final_softcap
    return out


def token_logprobs(
    spec: ModelSpec, params: Mapping[str, object], tokens: jax.Array, lora: Lora | None = None
) -> jax.Array:
    """log p(tokens[:, i+1] | tokens[:, :i+1]) as [B, T-1], from token ids [B, T]."""
    out = logits(spec, params, tokens[:, :-1], lora)
    logp = jax.nn.log_softmax(out.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
