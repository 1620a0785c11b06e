"""The distillation objectives and the `transform` parametrisation against float64 NumPy.

The references are written from the definitions (KL(p‖q) = Σ p (log p − log q), the delta
teacher z_T + z_S⁺ − z_S, cross-entropy, B_t = U_t M_U U_sᵀ B_s, A_t = A_s V_s M_Vᵀ V_tᵀ), not
from the code under test. Tolerances scale with the float32 round-off of the summed terms.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from crosslora_jax.ops.distill import (
    delta_kl,
    full_kl,
    next_byte_kl,
    product_kl,
    sequence_ce,
    shared_objective,
    shared_vocab_kl,
    transform_factors,
    transform_init,
)

EPS32 = np.finfo(np.float32).eps


def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def ref_kl(teacher: np.ndarray, student: np.ndarray, mask: np.ndarray) -> float:
    lp, lq = ref_log_softmax(teacher), ref_log_softmax(student)
    per = (np.exp(lp) * (lp - lq)).sum(-1)
    return float((per * mask).sum() / mask.sum())


def _batch(seed: int, b: int = 3, t: int = 5, v: int = 11, spread: float = 4.0):
    rng = np.random.default_rng(seed)
    z = [rng.standard_normal((b, t, v)).astype(np.float32) * spread for _ in range(4)]
    mask = (rng.random((b, t)) > 0.3).astype(np.float32)
    mask[0, 0] = 1.0  # at least one counted position
    return z, mask


def _tol(value: float, v: int) -> float:
    return 50 * EPS32 * (1 + abs(value)) * np.log2(v + 1) * 8


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_kl_matches_reference(seed: int) -> None:
    (zt, zs, _, _), mask = _batch(seed)
    want = ref_kl(zt, zs, mask)
    got = float(full_kl(jnp.asarray(zt), jnp.asarray(zs), jnp.asarray(mask)))
    assert abs(got - want) <= _tol(want, zt.shape[-1])
    assert want > 0.1  # the check is not vacuous: the distributions differ


def test_full_kl_is_zero_for_equal_logits_and_ignores_masked_positions() -> None:
    (zt, zs, _, _), mask = _batch(3)
    assert abs(float(full_kl(jnp.asarray(zt), jnp.asarray(zt), jnp.asarray(mask)))) < 1e-5
    spoiled = zs.copy()
    spoiled[mask == 0] += 100.0  # changes only positions the mask drops
    a = float(full_kl(jnp.asarray(zt), jnp.asarray(zs), jnp.asarray(mask)))
    b = float(full_kl(jnp.asarray(zt), jnp.asarray(spoiled), jnp.asarray(mask)))
    assert abs(a - b) <= _tol(a, zt.shape[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_delta_kl_matches_reference(seed: int) -> None:
    (z_target, z_source_lora, z_source, z_student), mask = _batch(seed)
    teacher = z_target.astype(np.float64) + z_source_lora - z_source
    want = ref_kl(teacher, z_student, mask)
    got = float(delta_kl(*(jnp.asarray(x) for x in (z_target, z_source_lora, z_source, z_student, mask))))
    assert abs(got - want) <= _tol(want, z_target.shape[-1]) * 4


def test_delta_teacher_is_the_target_when_the_adapter_changes_nothing() -> None:
    (z_target, z_source, _, z_student), mask = _batch(4)
    got = float(delta_kl(*(jnp.asarray(x) for x in (z_target, z_source, z_source, z_student, mask))))
    want = ref_kl(z_target, z_student, mask)
    assert abs(got - want) <= _tol(want, z_target.shape[-1]) * 4


@pytest.mark.parametrize(("seed", "weight"), [(0, 0.75), (1, 0.3)])
def test_product_kl_matches_reference(seed: int, weight: float) -> None:
    (z_target, z_source_lora, _, z_student), mask = _batch(seed)
    teacher = (1 - weight) * z_target.astype(np.float64) + weight * z_source_lora.astype(np.float64)
    want = ref_kl(teacher, z_student, mask)
    got = float(product_kl(*(jnp.asarray(x) for x in (z_target, z_source_lora, z_student, mask)), weight))
    assert abs(got - want) <= _tol(want, z_target.shape[-1]) * 4


def test_product_teacher_at_weight_one_is_full_and_at_zero_the_target() -> None:
    (z_target, z_source_lora, _, z_student), mask = _batch(5)
    args = [jnp.asarray(x) for x in (z_target, z_source_lora, z_student, mask)]
    for weight, teacher in ((1.0, z_source_lora), (0.0, z_target)):
        want = ref_kl(teacher, z_student, mask)
        assert abs(float(product_kl(*args, weight)) - want) <= _tol(want, z_target.shape[-1]) * 4, weight


@pytest.mark.parametrize("seed", [0, 1])
def test_sequence_ce_matches_reference(seed: int) -> None:
    (z, _, _, _), mask = _batch(seed)
    labels = np.random.default_rng(seed + 10).integers(0, z.shape[-1], z.shape[:2])
    lq = ref_log_softmax(z)
    nll = -np.take_along_axis(lq, labels[..., None], axis=-1)[..., 0]
    want = float((nll * mask).sum() / mask.sum())
    got = float(sequence_ce(jnp.asarray(z), jnp.asarray(labels), jnp.asarray(mask)))
    assert abs(got - want) <= _tol(want, z.shape[-1])


@pytest.mark.parametrize("seed", [0, 1])
def test_shared_vocab_kl_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(7 + seed)
    zt = rng.standard_normal((2, 6, 13)).astype(np.float32) * 3  # the teacher reads 6 positions
    zs = rng.standard_normal((2, 4, 9)).astype(np.float32) * 3  # the student 4
    positions = np.asarray([[-1, 0, 2, 5], [1, -1, 3, 4]], np.int32)
    mask = np.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
    ids_t, ids_s = np.asarray([0, 3, 5, 12]), np.asarray([8, 1, 2, 4])  # the same 4 strings in each vocabulary
    labels = rng.integers(0, 9, (2, 4))
    # reference: a loop over the counted positions, each distribution cut to the shared tokens
    terms = []
    for b in range(2):
        for t in range(4):
            if mask[b, t] and positions[b, t] >= 0:
                lp = ref_log_softmax(zt[b, positions[b, t], ids_t])
                lq = ref_log_softmax(zs[b, t, ids_s])
                terms.append(float((np.exp(lp) * (lp - lq)).sum()))
    want = float(np.mean(terms))
    args = [jnp.asarray(x) for x in (zt, zs, positions, ids_t, ids_s)]
    got = float(shared_vocab_kl(*args, jnp.asarray(mask)))
    assert len(terms) == 5 and want > 0.1
    assert abs(got - want) <= _tol(want, 4)
    # `shared`: that KL plus w × the cross-entropy over every position the mask keeps (aligned or not)
    lq_all = ref_log_softmax(zs)
    nll = -np.take_along_axis(lq_all, labels[..., None], axis=-1)[..., 0]
    ce = float((nll * mask).sum() / mask.sum())
    for w in (0.0, 0.5):
        got = float(shared_objective(*args, jnp.asarray(labels), jnp.asarray(mask), w))
        assert abs(got - (want + w * ce)) <= _tol(want + w * ce, 9)


def test_next_byte_kl_matches_reference() -> None:
    rng = np.random.default_rng(11)
    zt = rng.standard_normal((2, 6, 13)).astype(np.float32) * 3
    zs = rng.standard_normal((2, 4, 9)).astype(np.float32) * 3
    positions = np.asarray([[-1, 0, 2, 5], [1, -1, 3, 4]], np.int32)
    mask = np.asarray([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
    # first bytes of each token; 256: no byte (a special token); byte 7 only the student has
    bytes_t = np.asarray([97, 97, 98, 256, 99, 32, 32, 32, 98, 97, 100, 99, 256], np.int32)
    bytes_s = np.asarray([32, 97, 98, 99, 100, 7, 97, 256, 32], np.int32)
    terms = []
    for b in range(2):
        for t in range(4):
            if mask[b, t] and positions[b, t] >= 0:
                p = np.exp(ref_log_softmax(zt[b, positions[b, t]]))
                q = np.exp(ref_log_softmax(zs[b, t]))
                pb, qb = np.zeros(257), np.zeros(257)
                np.add.at(pb, bytes_t, p)
                np.add.at(qb, bytes_s, q)
                keep = pb > 0
                terms.append(float((pb[keep] * (np.log(pb[keep]) - np.log(qb[keep]))).sum()))
    want = float(np.mean(terms))
    got = float(next_byte_kl(*(jnp.asarray(x) for x in (zt, zs, positions, bytes_t, bytes_s, mask))))
    assert len(terms) == 5 and want > 0.1
    assert abs(got - want) <= _tol(want, 13)


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def test_transform_factors_match_reference() -> None:
    rng = np.random.default_rng(0)
    L, k, ms, ns, mt, nt, rs, rt = 2, 3, 9, 7, 11, 8, 5, 6
    us = np.stack([_orthonormal(rng, ms, rs) for _ in range(L)])
    vs = np.stack([_orthonormal(rng, ns, rs) for _ in range(L)])
    ut = np.stack([_orthonormal(rng, mt, rt) for _ in range(L)])
    vt = np.stack([_orthonormal(rng, nt, rt) for _ in range(L)])
    a_s, b_s = rng.standard_normal((L, k, ns)), rng.standard_normal((L, ms, k))
    m_u, m_v = rng.standard_normal((L, rt, rs)), rng.standard_normal((L, rt, rs))
    a_proj = a_s @ vs
    b_proj = np.swapaxes(us, 1, 2) @ b_s
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    a_t, b_t = transform_factors(*(f32(x) for x in (a_proj, b_proj, ut, vt, m_u, m_v)))
    want_b = ut @ m_u @ np.swapaxes(us, 1, 2) @ b_s
    want_a = a_s @ vs @ np.swapaxes(m_v, 1, 2) @ np.swapaxes(vt, 1, 2)
    for got, want in ((a_t, want_a), (b_t, want_b)):
        err = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
        assert err < 1e3 * EPS32


def _cross_lora_equal_widths(a_s, b_s, us, vs, ut, vt):
    """Cross-LoRA on equal shapes in float64: Ũ = U_s U_s⁺ U_t, B_t = Ũ Ũᵀ B_s, A_t = A_s Ṽ Ṽᵀ."""
    u_al = us @ (np.linalg.pinv(us) @ ut)
    v_al = vs @ (np.linalg.pinv(vs) @ vt)
    return a_s @ v_al @ v_al.T, u_al @ u_al.T @ b_s


@pytest.mark.parametrize("seed", [0, 1])
def test_transform_init_reproduces_cross_lora_within_the_target_subspaces(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, m, n, rs, rt = 4, 12, 10, 6, 5
    us, vs, ut, vt = (_orthonormal(rng, d, r) for d, r in ((m, rs), (n, rs), (m, rt), (n, rt)))
    a_s, b_s = rng.standard_normal((k, n)), rng.standard_normal((m, k))
    a_df, b_df = _cross_lora_equal_widths(a_s, b_s, us, vs, ut, vt)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    a_proj, b_proj = a_s @ vs, us.T @ b_s
    m_u, m_v = transform_init(*(f32(x) for x in (a_proj, b_proj, ut, vt, a_df, b_df)))
    a_t, b_t = transform_factors(*(f32(x)[None] for x in (a_proj, b_proj, ut, vt, np.asarray(m_u), np.asarray(m_v))))
    want_b, want_a = ut @ ut.T @ b_df, a_df @ vt @ vt.T
    cond = np.linalg.cond(b_proj) * np.linalg.cond(a_proj)
    for got, want in ((np.asarray(a_t[0]), want_a), (np.asarray(b_t[0]), want_b)):
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < 1e3 * EPS32 * cond


def test_transform_init_is_the_least_squares_fit_when_not_representable() -> None:
    rng = np.random.default_rng(5)
    k, mt, nt, rs, rt = 3, 9, 8, 4, 5
    a_proj, b_proj = rng.standard_normal((k, rs)), rng.standard_normal((rs, k))
    ut, vt = _orthonormal(rng, mt, rt), _orthonormal(rng, nt, rt)
    a_init, b_init = rng.standard_normal((k, nt)), rng.standard_normal((mt, k))
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    m_u, m_v = transform_init(*(f32(x) for x in (a_proj, b_proj, ut, vt, a_init, b_init)))
    # argmin_M ‖M C − Y‖: lstsq on the transposed system Cᵀ Mᵀ = Yᵀ.
    want_u = np.linalg.lstsq(b_proj.T, (ut.T @ b_init).T, rcond=None)[0].T
    want_v = np.linalg.lstsq(a_proj, a_init @ vt, rcond=None)[0].T
    cond = max(np.linalg.cond(a_proj), np.linalg.cond(b_proj))
    for got, want in ((m_u, want_u), (m_v, want_v)):
        err = np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)
        assert err < 1e3 * EPS32 * cond
