"""The teacher's data: prompts, sampled sequences, and the student's view of them.

Legend: N sequences, P prompt tokens, G generated tokens, T = P + G − 1 positions trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from crosslora_jax import _mesh
from crosslora_jax._errors import PromptsError
from crosslora_jax._progress import Progress
from crosslora_jax.distillation._train import Batch
from crosslora_jax.eval import Lora, ModelSpec, generate
from crosslora_jax.io.tokenizer import ModelTokenizer, generic_starts


def sample_sequences(
    spec: ModelSpec,
    params: Mapping[str, Any],
    lora: Lora | None,
    prompts: np.ndarray,
    *,
    gen_len: int,
    temperature: float,
    top_p: float,
    key: jax.Array,
    batch_size: int,
    progress: Progress,
    label: str,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Token ids [N, P + G]: each prompt [N, P] continued by the model (KV-cached sampling),
    generated `batch_size` rows at a time; deterministic for `key`, whatever the device count.
    With `mesh`, rows are split over its data axis and `params` may be FSDP-sharded over it
    (each layer gathered inside the decode loop); every process gets every row. `progress`
    gets one step per batch (every batch costs the same: the last is padded), labelled
    `label: done/N sequences sampled`."""
    out = []
    n = prompts.shape[0]
    batches = range(0, n, batch_size)
    progress.start(len(batches), len(batches))
    for start in batches:
        part = prompts[start : start + batch_size]
        rows = part.shape[0]
        part = _mesh.pad_rows(part, batch_size, part[-1])  # one compiled shape: the padding is dropped after
        tokens = generate(
            spec,
            params,
            jnp.asarray(part, jnp.int32),
            gen_len=gen_len,
            key=jax.random.fold_in(key, start),
            temperature=temperature,
            top_p=top_p,
            lora=lora,
            mesh=mesh,
            layer_sharding=None if mesh is None else _mesh.replicated(mesh),
        )
        out.append(_mesh.to_host(tokens, rows))  # type: ignore[arg-type]
        progress.step(1.0, f"{label}: {min(start + batch_size, n):,}/{n:,} sequences sampled")
    progress.close()
    return np.concatenate(out)


def as_batch(tokens: np.ndarray, mask: np.ndarray | None = None) -> Batch:
    """Next-token training view of sequences [N, S]: inputs [N, S-1], targets [N, S-1], and the
    mask (positions whose input and target are both real tokens)."""
    valid = np.ones_like(tokens, bool) if mask is None else mask.astype(bool)
    return Batch(
        inputs=tokens[:, :-1].astype(np.int32),
        targets=tokens[:, 1:].astype(np.int32),
        mask=(valid[:, :-1] & valid[:, 1:]).astype(np.float32),
    )


def generic_prompts(tok: ModelTokenizer, count: int, seed: int) -> np.ndarray:
    """`count` one-token starts [count, 1] drawn (seeded) from the tokenizer's generic starts."""
    starts = generic_starts(tok)
    return starts[np.random.default_rng(seed).integers(0, starts.shape[0], count)]


def user_prompts(tok: ModelTokenizer, texts: Sequence[str], count: int, seed: int, where: Path) -> np.ndarray:
    """`count` prompts [count, P] from the user's texts in a seeded order (the list repeats as
    needed), each cut to the shortest one's token count P so that batches need no padding."""
    encoded = [([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(t) for t in texts]
    length = min(len(e) for e in encoded)
    if length == 0:
        raise PromptsError(where, "a prompt encodes to no tokens")
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(len(encoded)), count))
    return np.asarray([encoded[i][:length] for i in order], np.int32)
