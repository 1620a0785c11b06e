"""`generate`: batched sampling from the model with a key/value cache, one compiled decode step.

The prompt is prefilled in one forward pass, then each new token costs one single-token pass
over the cache (`_model.logits_with_cache`), inside a `lax.scan` under one `jit`. Sampling is
temperature (0 = greedy) then nucleus (top-p), as transformers orders its logits warpers.

Randomness is per row: row i's draws come from `fold_in(fold_in(key, i), step)`, so a row's
tokens depend on the key, its index and the model only, not on the batch size or on how the
batch is split over devices (padding rows added for a mesh change nothing).

Limits: every prompt has the same length P (no padding, no per-row lengths), exactly `gen_len`
tokens are drawn (no stop tokens), and P + gen_len stays within the model's
`max_position_embeddings`.

Shapes: B batch, P prompt tokens, N = gen_len, V vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

from crosslora_jax import _mesh
from crosslora_jax._errors import OptionsError
from crosslora_jax.eval._model import KVCache, Lora, init_cache, logits_with_cache
from crosslora_jax.eval._spec import ModelSpec

DATA_AXIS = "data"


def generate(
    spec: ModelSpec,
    params: Mapping[str, object],
    prompts: jax.Array | np.ndarray,
    *,
    gen_len: int,
    key: jax.Array,
    temperature: float = 1.0,
    top_p: float = 1.0,
    lora: Lora | None = None,
    mesh: Mesh | None = None,
    data_axis: str = DATA_AXIS,
    layer_sharding: Sharding | None = None,
    return_logits: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Prompts int32 [B, P] (equal lengths) followed by `gen_len` sampled tokens: int32 [B, P+N].

    `temperature` 0 is greedy; `top_p` < 1 samples from the smallest set of tokens whose
    probability reaches it. `lora` is the side path of `logits` (the teacher's adapter unmerged).
    With `mesh`, the batch (prompts, cache, output) is sharded over its `data_axis`, padded to a
    multiple of that axis; params are used as placed (replicated when given as host arrays).
    `layer_sharding`: each layer's weights are constrained to it inside the layer loop (params
    stored sharded FSDP-style: the mesh's replicated sharding gathers one layer at a time).
    `return_logits` also returns the logits [B, N, V] each new token was drawn from (before
    temperature and top-p). The same key gives the same tokens, on any number of devices.
    """
    if not isinstance(gen_len, int) or isinstance(gen_len, bool) or gen_len < 1:
        raise OptionsError("gen_len", f"must be a positive integer, got {gen_len!r}")
    if not temperature >= 0:  # also refuses NaN
        raise OptionsError("temperature", f"must be >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise OptionsError("top_p", f"must be in (0, 1], got {top_p!r}")
    shape = np.shape(prompts)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise OptionsError("prompts", f"must be token ids [batch, length] with both at least 1, got shape {shape}")
    ids = np.asarray(prompts)
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= spec.vocab:
        raise OptionsError("prompts", f"must be integer token ids in [0, {spec.vocab}), got {ids.dtype} values")
    if shape[1] + gen_len > spec.max_positions:  # RoPE past the trained length gives meaningless text
        raise OptionsError(
            "gen_len",
            f"prompt ({shape[1]}) + gen_len ({gen_len}) tokens exceed the model's {spec.max_positions} positions",
        )
    batch = shape[0]
    sharding = None
    if mesh is not None:
        if data_axis not in mesh.axis_names:
            raise OptionsError("mesh", f"has no axis {data_axis!r} (axes: {', '.join(mesh.axis_names)})")
        ids = _mesh.pad_rows(ids, -(-batch // mesh.shape[data_axis]) * mesh.shape[data_axis], ids[0])
        sharding = NamedSharding(mesh, PartitionSpec(data_axis))
        tokens = jax.device_put(ids.astype(np.int32), sharding)
    else:
        tokens = jnp.asarray(ids, jnp.int32)
    out, step_logits = _generate(
        spec,
        params,
        tokens,
        key,
        lora,
        gen_len=gen_len,
        temperature=float(temperature),
        top_p=float(top_p),
        batch_sharding=sharding,
        layer_sharding=layer_sharding,
        keep_logits=return_logits,
    )
    if return_logits:
        return out[:batch], step_logits[:batch]
    return out[:batch]


@functools.partial(
    jax.jit,
    static_argnames=("spec", "gen_len", "temperature", "top_p", "batch_sharding", "layer_sharding", "keep_logits"),
)
def _generate(
    spec: ModelSpec,
    params: Mapping[str, object],
    prompts: jax.Array,
    key: jax.Array,
    lora: Lora | None,
    *,
    gen_len: int,
    temperature: float,
    top_p: float,
    batch_sharding: NamedSharding | None,
    layer_sharding: Sharding | None,
    keep_logits: bool,
) -> tuple[jax.Array, jax.Array | None]:
    """(tokens [B, P+N], the logits [B, N, V] they were drawn from, or None)."""
    batch, prompt_len = prompts.shape
    cache = init_cache(spec, batch, prompt_len + gen_len - 1)  # the last token is never fed back
    if batch_sharding is not None:
        on_batch = NamedSharding(batch_sharding.mesh, PartitionSpec(None, *batch_sharding.spec))
        cache = KVCache(
            jax.lax.with_sharding_constraint(cache.k, on_batch),
            jax.lax.with_sharding_constraint(cache.v, on_batch),
            cache.length,
        )
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(batch))

    def draw(step_logits: jax.Array, step: jax.Array) -> jax.Array:
        keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        return _sample(step_logits, keys, temperature, top_p)

    prefill, cache = logits_with_cache(spec, params, cache, prompts, lora, layer_sharding=layer_sharding)

    def step(carry: tuple[KVCache, jax.Array], i: jax.Array) -> tuple[tuple[KVCache, jax.Array], tuple]:
        cache, last = carry  # last: [B, V], the logits of the newest position
        token = draw(last, i)
        nxt, cache = logits_with_cache(spec, params, cache, token[:, None], lora, layer_sharding=layer_sharding)
        return (cache, nxt[:, 0]), (token, last if keep_logits else None)

    (_, last), (tokens, seen) = jax.lax.scan(step, (cache, prefill[:, -1]), jnp.arange(gen_len - 1))
    final = draw(last, jnp.asarray(gen_len - 1))
    out = jnp.concatenate([prompts, tokens.T.astype(jnp.int32), final[:, None].astype(jnp.int32)], axis=1)
    if not keep_logits:
        return out, None
    return out, jnp.concatenate([jnp.swapaxes(seen, 0, 1), last[:, None]], axis=1)


def _sample(step_logits: jax.Array, keys: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """One token per row of logits [B, V] (keys [B]): greedy at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top-p nucleus."""
    z = step_logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(z, axis=-1).astype(jnp.int32)
    z = z / temperature
    if top_p < 1:
        z = _nucleus(z, top_p)
    return jax.vmap(jax.random.categorical)(keys, z).astype(jnp.int32)


def _nucleus(z: jax.Array, top_p: float) -> jax.Array:
    """Logits [B, V] with every token outside the nucleus set to -inf: the nucleus is the most
    likely tokens down to the first whose cumulative probability reaches `top_p` (always >= 1
    token; ties with its logit stay in)."""
    ordered = -jnp.sort(-z, axis=-1)  # descending
    probs = jax.nn.softmax(ordered, axis=-1)
    above = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked before each one
    count = jnp.sum(above < top_p, axis=-1, keepdims=True)  # >= 1: the first has 0 above it
    threshold = jnp.take_along_axis(ordered, count - 1, axis=-1)
    return jnp.where(z >= threshold, z, -jnp.inf)
