"""cross_lora / lora_x / truncate against a float64 NumPy re-derivation of docs/method.md (the equations as implemented).

The reference below is written from the equations, not from the code under test. Inputs have a
spectral gap at r (or exact rank r) so the truncated subspaces are well defined; comparisons
are on ΔW = B·A, never on singular vectors.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from crosslora_jax.ops import SvdSettings, transfer_stack, truncated_svd

# ---------------------------------------------------------------- float64 reference


def ref_pad(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols))
    r, c = min(rows, x.shape[0]), min(cols, x.shape[1])
    out[:r, :c] = x[:r, :c]
    return out


def ref_svd(w: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    u, _, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    re = min(r, *w.shape)
    return u[:, :re], vt[:re].T


def ref_delta(method: str, a_s, b_s, w_s, w_t, r: int) -> np.ndarray:
    """ΔW_t (without γ) for one layer, straight from the equations."""
    a_s, b_s = a_s.astype(np.float64), b_s.astype(np.float64)
    (m_s, n_s), (m_t, n_t) = w_s.shape, w_t.shape
    dw_s = b_s @ a_s
    if method == "truncate":
        return ref_pad(b_s, m_t, b_s.shape[1]) @ ref_pad(a_s, a_s.shape[0], n_t)
    u_s, v_s = ref_svd(w_s, r)
    u_t, v_t = ref_svd(w_t, r)
    if method == "lora_x":
        return u_t @ u_t.T @ ref_pad(dw_s, m_t, n_t) @ v_t @ v_t.T
    p, q = min(m_s, m_t), min(n_s, n_t)
    p_u = np.linalg.lstsq(u_s[:p], u_t[:p], rcond=None)[0]  # minimum-norm least squares
    p_v = np.linalg.lstsq(v_s[:q], v_t[:q], rcond=None)[0]
    uu, vv = u_s[:p] @ p_u, v_s[:q] @ p_v
    return ref_pad(uu @ uu.T @ dw_s[:p, :q] @ vv @ vv.T, m_t, n_t)


# ---------------------------------------------------------------- inputs


def gapped(rng: np.random.Generator, m: int, n: int, r: int, *, rank: int | None = None) -> np.ndarray:
    """Singular values 10..5 for the first r, 0.01.. after (or exactly zero past `rank`)."""
    k = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, k)))
    v, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.where(np.arange(k) < r, np.linspace(10, 5, k), np.linspace(0.05, 0.01, k))
    if rank is not None:
        s[rank:] = 0.0
    return (u * s) @ v.T


def tolerance(*weights: np.ndarray, r: int) -> float:
    """Relative error float32 may make: eps × the largest dimension × the worst condition of the
    rank-r subspaces (s_1 / (s_r − s_{r+1}), the factor by which a perturbation turns them)."""
    worst = 1.0
    for w in weights:
        s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
        re = min(r, len(s))
        gap = s[re - 1] - (s[re] if re < len(s) else 0.0)
        worst = max(worst, s[0] / gap)
    dims = max(max(w.shape) for w in weights)
    return 4 * float(np.finfo(np.float32).eps) * dims * worst


def run_ours(method: str, a_s, b_s, w_s, w_t, r: int) -> np.ndarray:
    settings = SvdSettings(rank=r, engine="exact")
    ids = np.arange(a_s.shape[0], dtype=np.int32)
    src = truncated_svd(w_s.astype(np.float32), ids, settings)
    tgt = truncated_svd(w_t.astype(np.float32), ids, settings)
    a_t, b_t, _ = transfer_stack(method, a_s, b_s, src.u, src.v, tgt.u, tgt.v)
    return np.einsum("lmk,lkn->lmn", np.asarray(b_t, np.float64), np.asarray(a_t, np.float64))


# (m_s, n_s, m_t, n_t, r, k, source rank, target rank)
CASES = {
    "equal": (24, 20, 24, 20, 6, 4, None, None),
    "target_wider": (16, 20, 28, 32, 6, 4, None, None),
    "target_narrower": (28, 32, 16, 20, 6, 4, None, None),
    "mixed_wider_out_narrower_in": (16, 32, 28, 20, 6, 4, None, None),
    "gqa_kv": (8, 32, 16, 48, 5, 4, None, None),  # k/v: few out rows, many in columns
    "r_beyond_dims": (12, 10, 14, 9, 50, 3, None, None),  # r > every dim: r_e = min(m, n)
    "rank_deficient_bases": (20, 24, 20, 24, 4, 4, 4, 4),  # exact rank r, zero tail
    "p_below_r": (6, 24, 20, 24, 8, 2, None, None),  # Ū_s has fewer rows than columns
}


@pytest.mark.parametrize("method", ["cross_lora", "lora_x", "truncate"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_float64_reference(method: str, case: str) -> None:
    m_s, n_s, m_t, n_t, r, k, rank_s, rank_t = CASES[case]
    rng = np.random.default_rng(zlib.crc32(f"{method}/{case}".encode()))
    layers = 3
    w_s = np.stack([gapped(rng, m_s, n_s, r, rank=rank_s) for _ in range(layers)])
    w_t = np.stack([gapped(rng, m_t, n_t, r, rank=rank_t) for _ in range(layers)])
    a_s = rng.standard_normal((layers, k, n_s)).astype(np.float32)
    b_s = rng.standard_normal((layers, m_s, k)).astype(np.float32)
    ours = run_ours(method, a_s, b_s, w_s, w_t, r)
    for layer in range(layers):
        ref = ref_delta(method, a_s[layer], b_s[layer], w_s[layer], w_t[layer], r)
        err = np.linalg.norm(ours[layer] - ref) / max(np.linalg.norm(ref), 1e-30)
        tol = tolerance(w_s[layer], w_t[layer], r=r)
        assert ours[layer].shape == (m_t, n_t)
        assert err <= tol, f"{case}/{method} layer {layer}: relative error {err:.2e} > {tol:.2e}"


@pytest.mark.parametrize("k", [2, 7])
def test_per_module_ranks(k: int) -> None:
    """Different LoRA ranks go through the same op (rank_pattern gives modules their own k)."""
    rng = np.random.default_rng(k)
    w_s = np.stack([gapped(rng, 20, 16, 5)])
    w_t = np.stack([gapped(rng, 24, 12, 5)])
    a_s = rng.standard_normal((1, k, 16)).astype(np.float32)
    b_s = rng.standard_normal((1, 20, k)).astype(np.float32)
    ours = run_ours("cross_lora", a_s, b_s, w_s, w_t, 5)[0]
    ref = ref_delta("cross_lora", a_s[0], b_s[0], w_s[0], w_t[0], 5)
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) <= tolerance(w_s[0], w_t[0], r=5)


def test_bf16_and_f16_inputs_are_computed_in_float32() -> None:
    """Low-precision factors are widened first: the result equals the f32 run on the same values."""
    import ml_dtypes

    rng = np.random.default_rng(0)
    w_s = np.stack([gapped(rng, 16, 12, 4)])
    w_t = np.stack([gapped(rng, 16, 12, 4)])
    a32 = rng.standard_normal((1, 3, 12)).astype(np.float32)
    b32 = rng.standard_normal((1, 16, 3)).astype(np.float32)
    for dt in (ml_dtypes.bfloat16, np.float16):
        a, b = a32.astype(dt), b32.astype(dt)
        low = run_ours("cross_lora", a, b, w_s, w_t, 4)
        wide = run_ours("cross_lora", a.astype(np.float32), b.astype(np.float32), w_s, w_t, 4)
        np.testing.assert_allclose(low, wide, rtol=0, atol=1e-6 * np.abs(wide).max())
