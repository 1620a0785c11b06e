"""The teacher's data: prompts, sampled sequences, and the student's view of them.

Legend: N sequences, P prompt tokens, G generated tokens, T = P + G − 1 positions trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crosslora_jax._progress import Progress
from crosslora_jax.distillation._train import Batch
from crosslora_jax.eval import Lora, ModelSpec, generate


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
) -> np.ndarray:
    """Token ids [N, P + G]: each prompt [N, P] continued by the model (KV-cached sampling),
    generated `batch_size` rows at a time; deterministic for `key`."""
    out = []
    n = prompts.shape[0]
    for start in range(0, n, batch_size):
        part = prompts[start : start + batch_size]
        rows = part.shape[0]
        if rows < batch_size:  # one compiled shape: pad the last batch, drop the padding after
            part = np.concatenate([part, np.repeat(part[-1:], batch_size - rows, axis=0)])
        tokens = generate(
            spec,
            params,
            jnp.asarray(part, jnp.int32),
            gen_len=gen_len,
            key=jax.random.fold_in(key, start),
            temperature=temperature,
            top_p=top_p,
            lora=lora,
        )
        out.append(np.asarray(tokens)[:rows])
        progress.note(f"{label}: {min(start + batch_size, n)}/{n} sequences sampled")
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


def pad_ragged(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists cut or right-padded to `length`: ids [N, length] and the real-token mask."""
    ids = np.full((len(rows), length), pad_id, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for n, row in enumerate(rows):
        row = list(row)[:length]
        ids[n, : len(row)] = row
        mask[n, : len(row)] = True
    return ids, mask
