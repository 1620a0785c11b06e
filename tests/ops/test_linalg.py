"""ops._linalg's LAPACK wrappers: per-matrix results under vmap, and no batched LAPACK call on CPU.

Why the second matters: jaxlib's CPU LAPACK kernels split a batch over XLA's intra-op pool and
block the pool thread running them until the pieces finish, so two batched calls at once on a
2-thread pool deadlock (tools/lapack_pool_hang.py reproduces it). Every call the ops make must
therefore see one matrix at a time on CPU.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crosslora_jax.ops import SvdSettings, transfer_stack, truncated_svd
from crosslora_jax.ops._linalg import eigh, qr_q, thin_svd, thin_svd_via_qr
from crosslora_jax.ops.distill import transform_init

_LAPACK_CALL = re.compile(r"= \(?(f32\[[\d,]*\])[^=]*custom-call\([^)]*\), custom_call_target=\"lapack_")


def lapack_result_shapes(fn, *args) -> list[str]:
    """The first result shape of every LAPACK custom call in `fn`'s compiled CPU program."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    calls = [line for line in text.splitlines() if 'custom_call_target="lapack_' in line]
    shapes = [m.group(1) for m in map(_LAPACK_CALL.search, calls) if m]
    assert len(shapes) == len(calls), calls  # the pattern must read every call it finds
    return shapes


def _rank(shape: str) -> int:
    return len(shape[4:-1].split(","))


def _rng_stack(layers: int, m: int, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((layers, m, n)).astype(np.float32)


@pytest.mark.parametrize(
    "fn, shape",
    [
        (qr_q, (3, 12, 5)),
        (thin_svd, (3, 5, 12)),
        (thin_svd_via_qr, (3, 12, 5)),
        (thin_svd_via_qr, (1, 12, 5)),
        (lambda x: eigh(x @ x.mT), (3, 6, 4)),
    ],
    ids=["qr_q", "thin_svd", "thin_svd_via_qr", "one_layer", "eigh"],
)
def test_vmapped_wrappers_match_each_matrix_in_float64(fn, shape) -> None:
    x = _rng_stack(*shape)
    batched = jax.vmap(fn)(jnp.asarray(x))
    for i, xi in enumerate(x):
        x64 = xi.astype(np.float64)
        out = jax.tree.map(lambda a, i=i: np.asarray(a[i], np.float64), batched)
        tol = 1e-5 * np.linalg.cond(x64) * max(xi.shape)
        if fn is qr_q:
            np.testing.assert_allclose(out.T @ out, np.eye(shape[2]), atol=tol)
            np.testing.assert_allclose(out @ (out.T @ x64), x64, atol=tol * np.abs(x64).max())
        elif fn is thin_svd or fn is thin_svd_via_qr:
            u, s, vt = out
            np.testing.assert_allclose(s, np.linalg.svd(x64, compute_uv=False), rtol=tol)
            np.testing.assert_allclose((u * s) @ vt, x64, atol=tol * np.abs(x64).max())
        else:
            g = x64 @ x64.T
            w, v = out
            np.testing.assert_allclose(w, np.linalg.eigvalsh(g), atol=tol * np.abs(g).max())
            np.testing.assert_allclose((v * w) @ v.T, g, atol=tol * np.abs(g).max())


def test_wrapped_calls_are_unbatched_and_raw_ones_are_not() -> None:
    x = jnp.asarray(_rng_stack(3, 12, 5))
    assert {_rank(s) for s in lapack_result_shapes(jax.vmap(qr_q), x)} == {2}
    assert "while" not in jax.jit(jax.vmap(qr_q)).lower(x[:1]).as_text()  # one layer: no loop
    # The control: jnp's own QR under vmap is one batched call; if jaxlib stopped batching, this
    # test would no longer show the wrapper doing anything.
    assert {_rank(s) for s in lapack_result_shapes(jax.vmap(lambda y: jnp.linalg.qr(y)[0]), x)} == {3}


@pytest.mark.parametrize("engine", ["gram", "exact", "randomized"])
def test_truncated_svd_makes_no_batched_lapack_call(engine: str) -> None:
    w = jnp.asarray(_rng_stack(3, 40, 300))  # 300 ≥ 2 × the Krylov basis: gram takes block Lanczos
    settings = SvdSettings(rank=8, engine=engine, oversample=4)
    shapes = lapack_result_shapes(lambda w: truncated_svd(w, jnp.arange(3), settings), w)
    assert shapes and {_rank(s) for s in shapes} == {2}, shapes


def test_unequal_width_transfer_and_transform_init_make_no_batched_lapack_call() -> None:
    # Cropped blocks are not orthonormal: each of the four gets its own SVD, all independent.
    layers, k, r = 2, 4, 6
    a_s, b_s = _rng_stack(layers, k, 20), _rng_stack(layers, 24, k, 1)
    us, vs = _rng_stack(layers, 24, r, 2), _rng_stack(layers, 20, r, 3)
    ut, vt = _rng_stack(layers, 30, r, 4), _rng_stack(layers, 16, r, 5)
    args = [jnp.asarray(v) for v in (a_s, b_s, us, vs, ut, vt)]
    shapes = lapack_result_shapes(lambda *a: transfer_stack("cross_lora", *a), *args)
    assert len(shapes) >= 4 and {_rank(s) for s in shapes} == {2}, shapes
    a_proj, b_proj = jnp.asarray(_rng_stack(layers, k, r, 6)), jnp.asarray(_rng_stack(layers, r, k, 7))
    a_init, b_init = jnp.asarray(_rng_stack(layers, k, 16, 8)), jnp.asarray(_rng_stack(layers, 30, k, 9))
    shapes = lapack_result_shapes(jax.vmap(transform_init), a_proj, b_proj, args[4], args[5], a_init, b_init)
    assert len(shapes) == 2 and {_rank(s) for s in shapes} == {2}, shapes
