"""Matmul and crop/pad helpers shared by the ops; always float32 at highest precision."""

from __future__ import annotations

from typing import Annotated

import jax.numpy as jnp
from jax import Array, lax


def mm(a: Annotated[Array, "... i j"], b: Annotated[Array, "... j l"]) -> Annotated[Array, "... i l"]:
    # TPUs and GPUs default to bf16 passes for f32 matmuls; subspace math needs full f32.
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def crop_or_pad(x: Annotated[Array, "a b"], rows: int, cols: int) -> Annotated[Array, "rows cols"]:
    """`pad(X, rows, cols)` of docs/method.md: keep the leading block, zero-fill the rest."""
    x = x[:rows, :cols]
    return jnp.pad(x, ((0, rows - x.shape[0]), (0, cols - x.shape[1])))
