"""Matmul, LAPACK-call, thin-SVD and crop/pad helpers shared by the ops; float32 at highest precision."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import jax
import jax.numpy as jnp
from jax import Array, lax


def mm(a: Annotated[Array, "... i j"], b: Annotated[Array, "... j l"]) -> Annotated[Array, "... i l"]:
    # TPUs and GPUs default to bf16 passes for f32 matmuls; subspace math needs full f32.
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def per_matrix(fn: Callable[[Array], Any], x: Annotated[Array, "a b"]) -> Any:
    """`fn(x)` for a LAPACK-backed `fn` of one matrix; under vmap on CPU, a loop over the batch.

    jaxlib's CPU LAPACK kernels split a batch over XLA's intra-op thread pool and block the pool
    thread that runs them until every piece is done. Two such calls running at once on a
    2-thread pool (the cropped blocks of `transfer_stack`, two QRs of one draw) wait on each other
    forever: gdb shows both pool threads in `jax::ParallelBatchMap` → `BlockingCounter::Wait`
    (tools/lapack_pool_hang.py reproduces it). A call on one matrix runs inline, so on CPU
    vmap gets a `lax.map` over single matrices; on a 2-core host the batched call kept one pool
    thread waiting anyway. GPU and TPU solvers have no such pool and keep the batched call.
    """
    if jax.default_backend() != "cpu":
        return fn(x)

    @jax.custom_batching.custom_vmap
    def one(y: Array) -> Any:
        return fn(y)

    @one.def_vmap
    def _looped(axis_size: int, in_batched: list[bool], y: Array) -> tuple[Any, Any]:
        if not in_batched[0]:
            out = one(y)
        elif axis_size == 1:  # no loop for a single layer: the program a plain call gives
            out = jax.tree.map(lambda a: a[None], one(y[0]))
        else:
            out = lax.map(one, y)
        return out, jax.tree.map(lambda _: in_batched[0], out)

    return one(x)


def qr_q(x: Annotated[Array, "a b"]) -> Annotated[Array, "a b"]:
    """Orthonormal Q of the reduced QR of x (a ≥ b)."""
    return per_matrix(lambda y: jnp.linalg.qr(y, mode="reduced")[0], x)


def eigh(x: Annotated[Array, "d d"]) -> tuple[Annotated[Array, " d"], Annotated[Array, "d d"]]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric x."""
    return per_matrix(jnp.linalg.eigh, x)


def thin_svd(
    x: Annotated[Array, "a b"], algorithm: lax.linalg.SvdAlgorithm | None = None
) -> tuple[Array, Array, Array]:
    """Thin SVD x = U diag(s) Vᵀ (returns U, s, Vᵀ) with XLA's `algorithm` (None: the backend's default)."""
    return per_matrix(lambda y: tuple(lax.linalg.svd(y, full_matrices=False, algorithm=algorithm)), x)


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
        return thin_svd(x)
    qx, rx = per_matrix(lambda y: tuple(jnp.linalg.qr(y, mode="reduced")), x)
    ur, s, vt = thin_svd(rx)
    return mm(qx, ur), s, vt
