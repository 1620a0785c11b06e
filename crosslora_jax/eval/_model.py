"""Causal-LM forward pass as pure functions of the canonical param pytree; `lax.scan` over layers.

One implementation serves the full forward (`logits`) and incremental decoding with a key/value
cache (`init_cache`, `logits_with_cache`): the same projections, norms, RoPE, masks and softcaps,
the cache path only attending to stored keys at their absolute positions.

Precision: activations, norms, attention and the LoRA side path are float32. Weight matrices
may be stored narrower (bfloat16): their matmuls then round the input to the weight's dtype and
accumulate in float32 (`_dot`), so the weight is never widened in memory. For training,
`remat=True` recomputes each layer in the backward pass instead of keeping its activations, and
`layer_sharding` (weights stored sharded, FSDP-style) gathers each layer's weights there, one
layer at a time — in the backward pass too.

Shapes: B batch, T tokens, D hidden, H query heads, KV key/value heads, G = H/KV, hd head_dim,
V vocab, L layers, k LoRA rank, S cache slots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Sharding

from crosslora_jax.eval._spec import ModelSpec
from crosslora_jax.io.stacks import LoraStack

_HI = jax.lax.Precision.HIGHEST

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}

# Optional LoRA side path: role -> LoraStack over every layer (a [L, k, n], b [L, m, k], scale [L]);
# y += scale·(x Aᵀ) Bᵀ.
Lora = Mapping[str, LoraStack]


class KVCache(NamedTuple):
    """Rotated keys and values of the tokens seen so far, slots 0..length-1 filled.

    k, v: [L, B, S, KV, hd]; length: int32 scalar, the same for every row (equal-length prompts).
    """

    k: jax.Array
    v: jax.Array
    length: jax.Array


def rms_norm(x: jax.Array, w: jax.Array, eps: float, offset: float) -> jax.Array:
    """x [..., d] normalised over d, times (offset + w [d])."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y * (offset + w)


def _rope(x: jax.Array, inv_freq: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotate-half RoPE of x [B, T, heads, hd] at absolute positions [T]."""
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, hd]
    cos, sin = jnp.cos(emb)[None, :, None, :], jnp.sin(emb)[None, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _dot(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """einsum of float32 activations with a weight: at full precision for float32 weights; for
    narrower ones x is rounded to their dtype and the products accumulate in float32 (what
    tensor cores and TPUs do natively), the weight never copied wider."""
    if w.dtype == jnp.float32:
        return jnp.einsum(equation, x, w, precision=_HI)
    return jnp.einsum(equation, x.astype(w.dtype), w, preferred_element_type=jnp.float32)


def _linear(x: jax.Array, layer: Mapping[str, jax.Array], role: str, lora: LoraStack | None) -> jax.Array:
    """x [B, T, n] @ W [m, n]ᵀ (+ bias) (+ LoRA side path) -> [B, T, m], float32."""
    y = _dot("btn,mn->btm", x, layer[role])
    if f"{role}_bias" in layer:
        y = y + layer[f"{role}_bias"]
    if lora is not None:
        xa = jnp.einsum("btn,kn->btk", x, lora.a, precision=_HI)
        y = y + lora.scale * jnp.einsum("btk,mk->btm", xa, lora.b, precision=_HI)
    return y


def _attention(
    spec: ModelSpec,
    x: jax.Array,
    layer: Mapping[str, jax.Array],
    window: jax.Array,
    inv_freq: jax.Array,
    lora: Lora,
    positions: jax.Array,
    past: tuple[jax.Array, jax.Array] | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Causal (optionally sliding-window) grouped-query attention of x [B, T, D] at absolute
    `positions` [T] -> ([B, T, D], x's rotated keys and values [B, T, KV, hd]).

    `window` 0 = full attention, `inv_freq` [hd/2] this layer's RoPE frequencies. `past` None:
    x attends to itself; else this layer's cache (k, v) [B, S, KV, hd]: x's keys go into slots
    `positions` and x attends to every slot, masked by position (empty slots lie in the future).
    """
    b, t, _ = x.shape
    groups = spec.heads // spec.kv_heads
    q = _linear(x, layer, "q", lora.get("q")).reshape(b, t, spec.heads, spec.head_dim)
    k = _linear(x, layer, "k", lora.get("k")).reshape(b, t, spec.kv_heads, spec.head_dim)
    v = _linear(x, layer, "v", lora.get("v")).reshape(b, t, spec.kv_heads, spec.head_dim)
    if spec.qk_norm:
        q = rms_norm(q, layer["q_norm"], spec.norm_eps, spec.norm_offset)
        k = rms_norm(k, layer["k_norm"], spec.norm_eps, spec.norm_offset)
    q, k = _rope(q, inv_freq, positions), _rope(k, inv_freq, positions)
    if past is None:
        keys, values, key_positions = k, v, positions
    else:
        start = (0, positions[0], 0, 0)
        keys = jax.lax.dynamic_update_slice(past[0], k.astype(past[0].dtype), start)
        values = jax.lax.dynamic_update_slice(past[1], v.astype(past[1].dtype), start)
        key_positions = jnp.arange(keys.shape[1])
    q = q.reshape(b, t, spec.kv_heads, groups, spec.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, keys, precision=_HI) * spec.attn_scale
    if spec.attn_softcap is not None:
        scores = jnp.tanh(scores / spec.attn_softcap) * spec.attn_softcap
    qi, ki = positions[:, None], key_positions[None, :]
    allowed = (ki <= qi) & ((window == 0) | (ki > qi - window))  # [T, S]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, values, precision=_HI).reshape(b, t, spec.heads * spec.head_dim)
    return _linear(out, layer, "o", lora.get("o")), (k, v)


def _mlp(spec: ModelSpec, x: jax.Array, layer: Mapping[str, jax.Array], lora: Lora) -> jax.Array:
    """Gated MLP: down(act(gate(x)) * up(x)); x [B, T, D] -> [B, T, D]."""
    act = _ACTIVATIONS[spec.activation]
    h = act(_linear(x, layer, "gate", lora.get("gate"))) * _linear(x, layer, "up", lora.get("up"))
    return _linear(h, layer, "down", lora.get("down"))


def _block(
    spec: ModelSpec,
    x: jax.Array,
    layer: Mapping[str, jax.Array],
    window: jax.Array,
    inv_freq: jax.Array,
    lora: Lora,
    positions: jax.Array,
    past: tuple[jax.Array, jax.Array] | None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """One decoder layer -> (x [B, T, D], x's keys and values); `spec.block_norms` says where the
    (pre, post) norms sit around each half."""
    pre_attn, post_attn, pre_mlp, post_mlp = spec.block_norms

    def norm(h: jax.Array, name: str | None) -> jax.Array:
        return h if name is None else rms_norm(h, layer[name], spec.norm_eps, spec.norm_offset)

    attn, kv = _attention(spec, norm(x, pre_attn), layer, window, inv_freq, lora, positions, past)
    x = x + norm(attn, post_attn)
    return x + norm(_mlp(spec, norm(x, pre_mlp), layer, lora), post_mlp), kv


def _decoder(
    spec: ModelSpec,
    params: Mapping[str, object],
    tokens: jax.Array,
    positions: jax.Array,
    lora: Lora | None,
    cache: KVCache | None,
    remat: bool = False,
    layer_sharding: Sharding | None = None,
) -> tuple[jax.Array, KVCache | None]:
    """Final normed hidden states [B, T, D] of token ids [B, T] at `positions` [T]; with a cache,
    attending to it and returning it with these tokens' keys and values written in. `remat`:
    checkpoint each layer (its activations recomputed for the gradient); `layer_sharding`: where
    each layer's weights and LoRA factors are put inside the loop (replicated over a mesh: the
    FSDP gather)."""
    embed = params["embed"]
    x = jnp.take(embed, tokens, axis=0).astype(jnp.float32)  # type: ignore[arg-type]
    if spec.embed_scale:
        x = x * jnp.asarray(spec.hidden**0.5, jnp.float32)
    windows = jnp.asarray(spec.windows, jnp.int32)  # [L]
    inv_freqs = jnp.asarray(spec.inv_freqs, jnp.float32)  # [L, hd/2]
    layer_ids = jnp.arange(spec.num_layers)
    kv = None if cache is None else (cache.k, cache.v)

    Stacked = tuple[jax.Array, jax.Array] | None  # the cache's (k, v) [L, B, S, KV, hd]

    def step(
        carry: tuple[jax.Array, Stacked], xs: tuple[Mapping[str, jax.Array], jax.Array, jax.Array, Lora, jax.Array]
    ) -> tuple[tuple[jax.Array, Stacked], None]:
        h, stacked = carry
        layer, window, inv_freq, layer_lora, i = xs
        if layer_sharding is not None:
            layer, layer_lora = jax.lax.with_sharding_constraint((layer, layer_lora), layer_sharding)
        past = None if stacked is None else (stacked[0][i], stacked[1][i])
        h, (k, v) = _block(spec, h, layer, window, inv_freq, layer_lora, positions, past)
        if stacked is not None:  # the cache rides in the carry, so only the new slots are written, in place
            start = (i, 0, positions[0], 0, 0)
            stacked = (
                jax.lax.dynamic_update_slice(stacked[0], k[None].astype(stacked[0].dtype), start),
                jax.lax.dynamic_update_slice(stacked[1], v[None].astype(stacked[1].dtype), start),
            )
        return (h, stacked), None

    # prevent_cse=False: scan itself keeps XLA from merging the recomputation away
    body = jax.checkpoint(step, prevent_cse=False) if remat else step
    (x, kv), _ = jax.lax.scan(body, (x, kv), (params["layers"], windows, inv_freqs, lora or {}, layer_ids))
    h = rms_norm(x, params["norm"], spec.norm_eps, spec.norm_offset)  # type: ignore[arg-type]
    if cache is None:
        return h, None
    return h, KVCache(kv[0], kv[1], cache.length + tokens.shape[1])  # type: ignore[index]


def _head(spec: ModelSpec, params: Mapping[str, object], h: jax.Array) -> jax.Array:
    """Logits [B, T, V] of final hidden states [B, T, D] (with the final softcap, if any)."""
    head = params["embed"] if spec.tied else params["lm_head"]
    out = _dot("btd,vd->btv", h, head)  # type: ignore[arg-type]
    if spec.final_softcap is not None:
        out = jnp.tanh(out / spec.final_softcap) * spec.final_softcap
    return out


def hidden_states(
    spec: ModelSpec,
    params: Mapping[str, object],
    tokens: jax.Array,
    lora: Lora | None = None,
    *,
    remat: bool = False,
    layer_sharding: Sharding | None = None,
) -> jax.Array:
    """Final normed hidden states [B, T, D] of token ids [B, T] (`remat`, `layer_sharding`: see `logits`)."""
    positions = jnp.arange(tokens.shape[1])
    return _decoder(spec, params, tokens, positions, lora, None, remat, layer_sharding)[0]


def logits(
    spec: ModelSpec,
    params: Mapping[str, object],
    tokens: jax.Array,
    lora: Lora | None = None,
    *,
    remat: bool = False,
    layer_sharding: Sharding | None = None,
) -> jax.Array:
    """Next-token logits [B, T, V] of token ids [B, T] (right padding is harmless: attention is causal).

    `remat`: recompute each layer's activations in the backward pass rather than keep them (for
    training; the values and gradients are the same). `layer_sharding`: each layer's weights and
    LoRA factors are constrained to it inside the layer loop — for weights stored sharded over a
    mesh, its replicated sharding gathers one layer at a time (FSDP).
    """
    return _head(spec, params, hidden_states(spec, params, tokens, lora, remat=remat, layer_sharding=layer_sharding))


def token_logprobs(
    spec: ModelSpec, params: Mapping[str, object], tokens: jax.Array, lora: Lora | None = None
) -> jax.Array:
    """log p(tokens[:, i+1] | tokens[:, :i+1]) as [B, T-1], from token ids [B, T]."""
    out = logits(spec, params, tokens[:, :-1], lora)
    logp = jax.nn.log_softmax(out.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def init_cache(spec: ModelSpec, batch: int, slots: int, dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An empty cache for `batch` sequences of up to `slots` tokens ([L, B, S, KV, hd] of zeros)."""
    shape = (spec.num_layers, batch, slots, spec.kv_heads, spec.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


def logits_with_cache(
    spec: ModelSpec,
    params: Mapping[str, object],
    cache: KVCache,
    tokens: jax.Array,
    lora: Lora | None = None,
    *,
    layer_sharding: Sharding | None = None,
) -> tuple[jax.Array, KVCache]:
    """Logits [B, T, V] of token ids [B, T] that continue the cached sequences, and the cache with
    them appended: the prompt in one call (prefill), then one token per call (decode). Equals
    `logits` of the whole sequence at these positions. The caller keeps `cache.length + T` within
    its slots (writes past the end are clamped by XLA, not refused). `layer_sharding` as in `logits`."""
    positions = cache.length + jnp.arange(tokens.shape[1])
    h, cache = _decoder(spec, params, tokens, positions, lora, cache, layer_sharding=layer_sharding)
    return _head(spec, params, h), cache  # type: ignore[return-value]
