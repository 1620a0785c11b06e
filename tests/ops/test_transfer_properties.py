"""Properties the methods must have whatever the inputs, plus compile-once behaviour."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from _profiles import examples
from hypothesis import given, settings

from crosslora_jax.ops import SvdSettings, transfer_stack, truncated_svd
from crosslora_jax.ops import svd as svd_module
from crosslora_jax.ops import transfer as transfer_module


def _subspaces(w: np.ndarray, r: int):
    return truncated_svd(w, np.arange(w.shape[0], dtype=np.int32), SvdSettings(rank=r))


def _delta(a, b) -> np.ndarray:
    return np.einsum("lmk,lkn->lmn", np.asarray(b, np.float64), np.asarray(a, np.float64))


def _f32_atol(expect: np.ndarray, n: int) -> float:
    """Round-off of float32 products through n×n orthonormal factors: a few eps·n of the largest entry."""
    return 16 * n * float(np.finfo(np.float32).eps) * float(np.abs(expect).max())


def test_truncate_with_equal_shapes_returns_the_input() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 12, 10)).astype(np.float32)
    a = rng.standard_normal((2, 3, 10)).astype(np.float32)
    b = rng.standard_normal((2, 12, 3)).astype(np.float32)
    s = _subspaces(w, 4)
    a_t, b_t, _ = transfer_stack("truncate", a, b, s.u, s.v, s.u, s.v)
    np.testing.assert_array_equal(np.asarray(a_t), a)
    np.testing.assert_array_equal(np.asarray(b_t), b)


def test_lora_x_output_lies_in_the_target_subspaces() -> None:
    """Projecting the lora_x result again changes nothing."""
    rng = np.random.default_rng(1)
    w_s = rng.standard_normal((2, 14, 18)).astype(np.float32)
    w_t = rng.standard_normal((2, 20, 12)).astype(np.float32)
    a = rng.standard_normal((2, 4, 18)).astype(np.float32)
    b = rng.standard_normal((2, 14, 4)).astype(np.float32)
    src, tgt = _subspaces(w_s, 5), _subspaces(w_t, 5)
    a1, b1, _ = transfer_stack("lora_x", a, b, src.u, src.v, tgt.u, tgt.v)
    a2, b2, _ = transfer_stack("lora_x", a1, b1, tgt.u, tgt.v, tgt.u, tgt.v)
    d1, d2 = _delta(a1, b1), _delta(a2, b2)
    assert np.linalg.norm(d2 - d1) <= 1e-5 * np.linalg.norm(d1)
    u, v = np.asarray(tgt.u, np.float64), np.asarray(tgt.v, np.float64)
    outside = d1 - u @ np.swapaxes(u, 1, 2) @ d1 @ v @ np.swapaxes(v, 1, 2)
    assert np.linalg.norm(outside) <= 1e-5 * np.linalg.norm(d1)


def test_cross_lora_with_source_equal_target_at_full_rank_returns_the_source_update() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 16, 12)).astype(np.float32)
    a = rng.standard_normal((3, 4, 12)).astype(np.float32)
    b = rng.standard_normal((3, 16, 4)).astype(np.float32)
    s = _subspaces(w, 12)  # full rank: U spans range(W) ⊇ nothing lost on the 12-dim input side
    a_t, b_t, diag = transfer_stack("cross_lora", a, b, s.u, s.v, s.u, s.v)
    # Output side: U is 16×12, so only the part of ΔW in range(W) survives — compare projected.
    u = np.asarray(s.u, np.float64)
    expect = u @ np.swapaxes(u, 1, 2) @ _delta(a, b)
    np.testing.assert_allclose(_delta(a_t, b_t), expect, rtol=0, atol=_f32_atol(expect, 16))
    np.testing.assert_allclose(np.asarray(diag.phi_u), 1.0, atol=1e-5)
    # Square weights at full rank: the identity map exactly.
    w_sq = rng.standard_normal((2, 10, 10)).astype(np.float32)
    sq = _subspaces(w_sq, 10)
    a_sq = rng.standard_normal((2, 3, 10)).astype(np.float32)
    b_sq = rng.standard_normal((2, 10, 3)).astype(np.float32)
    a_t, b_t, _ = transfer_stack("cross_lora", a_sq, b_sq, sq.u, sq.v, sq.u, sq.v)
    expect = _delta(a_sq, b_sq)  # entries up to ~10: an absolute 1e-5 would be below float32 round-off
    np.testing.assert_allclose(_delta(a_t, b_t), expect, rtol=0, atol=_f32_atol(expect, 10))


# Few distinct sizes: every new shape costs a compile.
_dims = st.sampled_from([1, 4, 9])


@settings(max_examples=examples(25), deadline=None)
@given(
    m_s=_dims,
    n_s=_dims,
    m_t=_dims,
    n_t=_dims,
    k=st.sampled_from([1, 3]),
    r=st.sampled_from([1, 5, 12]),
    scale=st.sampled_from([0.0, 1e-20, 1.0, 1e20]),
    seed=st.integers(0, 2**31 - 1),
    method=st.sampled_from(["cross_lora", "lora_x", "truncate"]),
)
def test_outputs_are_finite_for_finite_inputs(m_s, n_s, m_t, n_t, k, r, scale, seed, method) -> None:
    """Including all-zero, tiny and huge weights, and rank-deficient ones."""
    rng = np.random.default_rng(seed)
    w_s = (rng.standard_normal((1, m_s, n_s)) * scale).astype(np.float32)
    w_t = rng.standard_normal((1, m_t, n_t)).astype(np.float32)
    w_t[:, :, : n_t // 2] = 0.0
    a = rng.standard_normal((1, k, n_s)).astype(np.float32)
    b = rng.standard_normal((1, m_s, k)).astype(np.float32)
    src, tgt = _subspaces(w_s, r), _subspaces(w_t, r)
    a_t, b_t, diag = transfer_stack(method, a, b, src.u, src.v, tgt.u, tgt.v)
    assert np.isfinite(np.asarray(a_t)).all() and np.isfinite(np.asarray(b_t)).all()
    assert all(np.isfinite(np.asarray(x)).all() for x in diag)
    assert np.isfinite(np.asarray(src.energy)).all()
    for phi in (diag.phi_u, diag.phi_v):
        assert (np.asarray(phi) >= -1e-6).all() and (np.asarray(phi) <= 1 + 1e-5).all()


@pytest.mark.parametrize("engine", ["gram", "exact"])
def test_each_op_traces_once_for_a_stack_of_layers(monkeypatch, engine: str) -> None:
    """The per-layer bodies run once at trace time for a whole stack, not once per layer."""
    calls = {"svd": 0, "transfer": 0}
    real_svd, real_layer = getattr(svd_module, f"_{engine}"), transfer_module.transfer_layer

    def counting_svd(*args, **kwargs):
        calls["svd"] += 1
        return real_svd(*args, **kwargs)

    def counting_layer(*args, **kwargs):
        calls["transfer"] += 1
        return real_layer(*args, **kwargs)

    monkeypatch.setattr(svd_module, f"_{engine}", counting_svd)
    monkeypatch.setattr(transfer_module, "transfer_layer", counting_layer)
    jax.clear_caches()
    rng = np.random.default_rng(3)
    layers = 7
    w = rng.standard_normal((layers, 13, 11)).astype(np.float32)
    a = rng.standard_normal((layers, 2, 11)).astype(np.float32)
    b = rng.standard_normal((layers, 13, 2)).astype(np.float32)
    for _ in range(3):  # repeated calls at the same shape reuse the compiled function
        s = truncated_svd(w, np.arange(layers, dtype=np.int32), SvdSettings(rank=3, engine=engine))
        transfer_stack("cross_lora", a, b, s.u, s.v, s.u, s.v)
    assert calls == {"svd": 1, "transfer": 1}
    assert truncated_svd._cache_size() == 1 and transfer_stack._cache_size() == 1
