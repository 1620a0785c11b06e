"""Matmul, thin-SVD and crop/pad helpers shared by the ops; always float32 at highest precision."""

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


def thin_svd_via_qr(x: Annotated[Array, "p c"]) -> tuple[Array, Array, Array]:
    """Thin SVD x = U diag(s) Vᵀ (returns U, s, Vᵀ); tall blocks (p > c) go through a QR first.

    XLA's CPU SVD is slow on tall p×c blocks (p up to 8192, c ≈ 320–384); a QR and the c×c SVD
    of R cost less and give the same singular values (R has x's).
    """
    if x.shape[0] <= x.shape[1]:
        return jnp.linalg.svd(x, full_matrices=False)
    qx, rx = jnp.linalg.qr(x, mode="reduced")
    ur, s, vt = jnp.linalg.svd(rx, full_matrices=False)
    return mm(qx, ur), s, vt
