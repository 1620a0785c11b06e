"""The evaluator's causal LM (`crosslora_jax.eval.logits` / `logits_with_cache`) as Flax NNX modules.

A prototype kept for tools/bench_nnx.py (issue 13 item 5: the package stays functional; the
measurement and the reason are in WORKSPACE.md). Needs flax (a test extra, not a dependency).
Same math as the functional model — tests/tools/test_bench_nnx.py checks its logits against it on
every architecture row. The per-layer modules hold [L, ...] stacks and are applied with
`nnx.scan`, so compile time stays flat in depth. LoRA factors are `LoraParam` variables:
`nnx.Optimizer(model, tx, wrt=LoraParam)` trains only them.

Shapes: B batch, T tokens, D hidden, H query heads, KV key/value heads, G = H/KV, hd head_dim,
V vocab, L layers, k LoRA rank, S cache slots.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from crosslora_jax.eval import KVCache, Lora, ModelSpec
from crosslora_jax.io.stacks import LoraStack

# Copies of the functional model's private helpers (tools use public names only).
_HI = jax.lax.Precision.HIGHEST
_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


def rms_norm(x: jax.Array, w: jax.Array, eps: float, offset: float) -> jax.Array:
    """x [..., d] normalised over d, times (offset + w [d])."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps) * (offset + w)


def _rope(x: jax.Array, inv_freq: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotate-half RoPE of x [B, T, heads, hd] at absolute positions [T]."""
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # [T, hd]
    cos, sin = jnp.cos(emb)[None, :, None, :], jnp.sin(emb)[None, :, None, :]
    half = x.shape[-1] // 2
    return x * cos + jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


class LoraParam(nnx.Param):
    """A LoRA factor: A [L, k, n] or B [L, m, k]; the only variables a `wrt=LoraParam` optimizer moves."""


class Const(nnx.Variable):
    """Fixed per-layer data: LoRA scale γ [L], attention window [L], RoPE frequencies [L, hd/2]."""


class LoraPath(nnx.Module):
    """The LoRA side path γ·(x Aᵀ) Bᵀ; A [k, n], B [m, k], γ scalar (stacked: a leading [L])."""

    def __init__(self, a: jax.Array, b: jax.Array, scale: jax.Array) -> None:
        self.a, self.b = LoraParam(jnp.asarray(a)), LoraParam(jnp.asarray(b))
        self.scale = Const(jnp.asarray(scale))

    def __call__(self, x: jax.Array) -> jax.Array:
        xa = jnp.einsum("btn,kn->btk", x, self.a[...], precision=_HI)
        return self.scale[...] * jnp.einsum("btk,mk->btm", xa, self.b[...], precision=_HI)


class Linear(nnx.Module):
    """y = x Wᵀ (+ bias) (+ LoRA side path); W [m, n] (stacked: [L, m, n])."""

    def __init__(self, w: jax.Array, bias: jax.Array | None, lora: LoraStack | None) -> None:
        self.w = nnx.Param(jnp.asarray(w))
        self.bias = None if bias is None else nnx.Param(jnp.asarray(bias))
        self.lora = None if lora is None else LoraPath(lora.a, lora.b, lora.scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("btn,mn->btm", x, self.w[...], precision=_HI)
        if self.bias is not None:
            y = y + self.bias[...]
        return y if self.lora is None else y + self.lora(x)


class Block(nnx.Module):
    """One decoder layer (built from [L, ...] stacks: a stack of layers for `nnx.scan`)."""

    def __init__(self, spec: ModelSpec, layers: Mapping[str, jax.Array], lora: Lora | None) -> None:
        self.spec = spec
        lora = lora or {}
        for role in ("q", "k", "v", "o", "gate", "up", "down"):
            setattr(self, role, Linear(layers[role], layers.get(f"{role}_bias"), lora.get(role)))
        self.norms = nnx.Dict({name: nnx.Param(jnp.asarray(layers[name])) for name in spec.norm_names})
        if spec.qk_norm:
            self.norms["q_norm"] = nnx.Param(jnp.asarray(layers["q_norm"]))
            self.norms["k_norm"] = nnx.Param(jnp.asarray(layers["k_norm"]))
        self.window = Const(jnp.asarray(spec.windows, jnp.int32))
        self.inv_freq = Const(jnp.asarray(spec.inv_freqs, jnp.float32))

    def _norm(self, h: jax.Array, name: str | None) -> jax.Array:
        return h if name is None else rms_norm(h, self.norms[name][...], self.spec.norm_eps, self.spec.norm_offset)

    def _attention(
        self, x: jax.Array, positions: jax.Array, past: tuple[jax.Array, jax.Array] | None
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        spec = self.spec
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, spec.heads, spec.head_dim)
        k = self.k(x).reshape(b, t, spec.kv_heads, spec.head_dim)
        v = self.v(x).reshape(b, t, spec.kv_heads, spec.head_dim)
        if spec.qk_norm:
            q, k = self._norm(q, "q_norm"), self._norm(k, "k_norm")
        inv_freq, window = self.inv_freq[...], self.window[...]
        q, k = _rope(q, inv_freq, positions), _rope(k, inv_freq, positions)
        if past is None:
            keys, values, key_positions = k, v, positions
        else:
            start = (0, positions[0], 0, 0)
            keys = jax.lax.dynamic_update_slice(past[0], k.astype(past[0].dtype), start)
            values = jax.lax.dynamic_update_slice(past[1], v.astype(past[1].dtype), start)
            key_positions = jnp.arange(keys.shape[1])
        q = q.reshape(b, t, spec.kv_heads, spec.heads // spec.kv_heads, spec.head_dim)
        scores = jnp.einsum("btkgd,bskd->bkgts", q, keys, precision=_HI) * spec.attn_scale
        if spec.attn_softcap is not None:
            scores = jnp.tanh(scores / spec.attn_softcap) * spec.attn_softcap
        qi, ki = positions[:, None], key_positions[None, :]
        allowed = (ki <= qi) & ((window == 0) | (ki > qi - window))  # [T, S]
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
        out = jnp.einsum("bkgts,bskd->btkgd", probs, values, precision=_HI).reshape(b, t, -1)
        return self.o(out), (k, v)

    def __call__(
        self, x: jax.Array, positions: jax.Array, past: tuple[jax.Array, jax.Array] | None
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [B, T, D] -> (x [B, T, D], x's rotated keys and values [B, T, KV, hd])."""
        pre_attn, post_attn, pre_mlp, post_mlp = self.spec.block_norms
        attn, kv = self._attention(self._norm(x, pre_attn), positions, past)
        x = x + self._norm(attn, post_attn)
        h = self._norm(x, pre_mlp)
        h = self.down(_ACTIVATIONS[self.spec.activation](self.gate(h)) * self.up(h))
        return x + self._norm(h, post_mlp), kv


class CausalLM(nnx.Module):
    """The whole model from the canonical params pytree (`_params.py`), with an optional LoRA side path."""

    def __init__(self, spec: ModelSpec, params: Mapping[str, object], lora: Lora | None = None) -> None:
        self.spec = spec
        self.embed = nnx.Param(jnp.asarray(params["embed"]))
        self.norm = nnx.Param(jnp.asarray(params["norm"]))
        self.lm_head = None if spec.tied else nnx.Param(jnp.asarray(params["lm_head"]))
        self.layers = Block(spec, params["layers"], lora)  # type: ignore[arg-type]

    def __call__(self, tokens: jax.Array, cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        """Logits [B, T, V] of token ids [B, T]; with a cache, continuing it (and returning it updated)."""
        spec = self.spec
        positions = jnp.arange(tokens.shape[1]) + (0 if cache is None else cache.length)
        x = jnp.take(self.embed[...], tokens, axis=0)
        if spec.embed_scale:
            x = x * jnp.asarray(spec.hidden**0.5, jnp.float32)
        kv = None if cache is None else (cache.k, cache.v)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def step(carry: tuple, block: Block, i: jax.Array) -> tuple:
            h, stacked = carry
            past = None if stacked is None else (stacked[0][i], stacked[1][i])
            h, (k, v) = block(h, positions, past)
            if stacked is not None:  # the cache rides in the carry: only the new slots are written
                start = (i, 0, positions[0], 0, 0)
                stacked = (
                    jax.lax.dynamic_update_slice(stacked[0], k[None].astype(stacked[0].dtype), start),
                    jax.lax.dynamic_update_slice(stacked[1], v[None].astype(stacked[1].dtype), start),
                )
            return h, stacked

        x, kv = step((x, kv), self.layers, jnp.arange(spec.num_layers))
        h = rms_norm(x, self.norm[...], spec.norm_eps, spec.norm_offset)
        head = self.embed[...] if self.lm_head is None else self.lm_head[...]
        out = jnp.einsum("btd,vd->btv", h, head, precision=_HI)
        if spec.final_softcap is not None:
            out = jnp.tanh(out / spec.final_softcap) * spec.final_softcap
        if cache is None:
            return out, None
        return out, KVCache(kv[0], kv[1], cache.length + tokens.shape[1])  # type: ignore[index]
