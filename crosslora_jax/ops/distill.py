"""Distillation math (docs/method.md, "Distillation"): the objectives and the `transform` adapter.

Legend: B batch, T positions, V vocabulary (V_s / V_t for teacher / student), U the teacher's
positions and S the shared tokens when the tokenizers differ, L layers, m out, n in, k LoRA rank,
r_s / r_t effective SVD ranks of source / target.

Objectives are means over the positions where `mask` is 1, in float32 whatever the logits'
dtype. KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) with p the teacher, q the student.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import jax
import jax.numpy as jnp
from jax import Array

from crosslora_jax.ops._linalg import mm, thin_svd


def _masked_mean(per_position: Annotated[Array, "B T"], mask: Annotated[Array, "B T"]) -> Array:
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_position * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def kl_per_position(
    teacher_logits: Annotated[Array, "B T V"], student_logits: Annotated[Array, "B T V"]
) -> Annotated[Array, "B T"]:
    """KL(softmax(teacher) ‖ softmax(student)) at every position."""
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def full_kl(
    teacher_logits: Annotated[Array, "B T V"], student_logits: Annotated[Array, "B T V"], mask: Annotated[Array, "B T"]
) -> Array:
    """`full`: the student imitates the teacher (source base + source adapter)."""
    return _masked_mean(kl_per_position(teacher_logits, student_logits), mask)


def delta_teacher(
    target_base: Annotated[Array, "B T V"],
    source_adapted: Annotated[Array, "B T V"],
    source_base: Annotated[Array, "B T V"],
) -> Annotated[Array, "B T V"]:
    """`delta`'s teacher logits z_T + z_S⁺ − z_S: the target moved by what the adapter changes in the source."""
    f32 = jnp.float32
    return target_base.astype(f32) + (source_adapted.astype(f32) - source_base.astype(f32))


def delta_kl(
    target_base: Annotated[Array, "B T V"],
    source_adapted: Annotated[Array, "B T V"],
    source_base: Annotated[Array, "B T V"],
    student_logits: Annotated[Array, "B T V"],
    mask: Annotated[Array, "B T"],
) -> Array:
    """`delta`: KL(p(z_T + z_S⁺ − z_S) ‖ p(z_θ)); needs one vocabulary for both models."""
    return full_kl(delta_teacher(target_base, source_adapted, source_base), student_logits, mask)


def product_teacher(
    target_base: Annotated[Array, "B T V"], source_adapted: Annotated[Array, "B T V"], weight: float
) -> Annotated[Array, "B T V"]:
    """`product`'s teacher logits (1 − b)·z_T + b·z_S⁺: a geometric mix of the target base and the
    source system, p ∝ p_T^(1−b) · p_S⁺^b (b = 1 is `full`'s teacher, b = 0 the target itself)."""
    f32 = jnp.float32
    return (1.0 - weight) * target_base.astype(f32) + weight * source_adapted.astype(f32)


def product_kl(
    target_base: Annotated[Array, "B T V"],
    source_adapted: Annotated[Array, "B T V"],
    student_logits: Annotated[Array, "B T V"],
    mask: Annotated[Array, "B T"],
    weight: float,
) -> Array:
    """`product`: KL(p((1 − b)·z_T + b·z_S⁺) ‖ p(z_θ)); needs one vocabulary for both models."""
    return full_kl(product_teacher(target_base, source_adapted, weight), student_logits, mask)


def sequence_ce(
    student_logits: Annotated[Array, "B T V"], next_tokens: Annotated[Array, "B T"], mask: Annotated[Array, "B T"]
) -> Array:
    """`sequence`: cross-entropy of the student on the teacher's text (token ids in the student's vocabulary)."""
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_q, next_tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return _masked_mean(nll, mask)


def shared_vocab_kl(
    teacher_logits: Annotated[Array, "B U V_s"],
    student_logits: Annotated[Array, "B T V_t"],
    teacher_positions: Annotated[Array, "B T"],
    teacher_ids: Annotated[Array, " S"],
    student_ids: Annotated[Array, " S"],
    mask: Annotated[Array, "B T"],
) -> Array:
    """KL between teacher and student where the two tokenizations meet, over the S tokens the
    vocabularies share (both restricted to them and renormalised).

    The teacher reads its own tokenization of the text (U positions): student position t is
    compared with teacher position `teacher_positions[b, t]`, the one that has read the same bytes
    (−1: none; such positions do not count, nor do those `mask` drops). Token teacher_ids[i] of
    the teacher's vocabulary is the same text as student_ids[i] of the student's.
    """
    shared_t = jnp.take(teacher_logits, teacher_ids, axis=-1)  # cut the vocabulary before gathering positions
    rows = _at_positions(shared_t, teacher_positions)
    return full_kl(rows, jnp.take(student_logits, student_ids, axis=-1), _aligned(mask, teacher_positions))


def next_byte_kl(
    teacher_logits: Annotated[Array, "B U V_s"],
    student_logits: Annotated[Array, "B T V_t"],
    teacher_positions: Annotated[Array, "B T"],
    teacher_bytes: Annotated[Array, " V_s"],
    student_bytes: Annotated[Array, " V_t"],
    mask: Annotated[Array, "B T"],
    bins: int = 257,
) -> Array:
    """KL between the two models' distributions of the next byte of the text, where the two
    tokenizations meet: each model's next-token probabilities summed by the first byte of each
    token (`teacher_bytes` / `student_bytes`: 0-255, or 256 for tokens of no byte: specials).
    Positions as in `shared_vocab_kl`."""

    def byte_log_probs(z: Array, first: Array) -> Array:
        p = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
        per_byte = jnp.zeros((*z.shape[:-1], bins), jnp.float32).at[..., first].add(p)
        return jnp.log(jnp.maximum(per_byte, jnp.finfo(jnp.float32).tiny))

    log_p = byte_log_probs(_at_positions(teacher_logits, teacher_positions), teacher_bytes)
    log_q = byte_log_probs(student_logits, student_bytes)
    return full_kl(log_p, log_q, _aligned(mask, teacher_positions))  # log-probabilities are logits too


def _at_positions(teacher: Annotated[Array, "B U X"], positions: Annotated[Array, "B T"]) -> Annotated[Array, "B T X"]:
    """The teacher's rows at each student position's aligned position (row 0 where there is none)."""
    return jnp.take_along_axis(teacher, jnp.maximum(positions, 0)[..., None].astype(jnp.int32), axis=1)


def _aligned(mask: Annotated[Array, "B T"], positions: Annotated[Array, "B T"]) -> Annotated[Array, "B T"]:
    """The mask, less the positions where the two tokenizations do not meet."""
    return mask.astype(jnp.float32) * (positions >= 0)


def shared_objective(
    teacher_logits: Annotated[Array, "B U V_s"],
    student_logits: Annotated[Array, "B T V_t"],
    teacher_positions: Annotated[Array, "B T"],
    teacher_map: Annotated[Array, " S_or_V_s"],
    student_map: Annotated[Array, " S_or_V_t"],
    next_tokens: Annotated[Array, "B T"],
    mask: Annotated[Array, "B T"],
    sequence_weight: float,
    kl: Callable[..., Array] = shared_vocab_kl,
) -> Array:
    """Tokenizers that differ: `kl` where the tokenizations meet (`shared_vocab_kl`, the maps are
    the shared ids, or `next_byte_kl`, the maps are first bytes), + `sequence_weight` ×
    `sequence_ce` on the teacher's text in the student's tokens."""
    value = kl(teacher_logits, student_logits, teacher_positions, teacher_map, student_map, mask)
    if sequence_weight == 0:
        return value
    return value + sequence_weight * sequence_ce(student_logits, next_tokens, mask)


# ---------------------------------------------------------------------------------------------
# `--learn=transform`: B_t = U_t M_U (U_sᵀ B_s), A_t = (A_s V_s) M_Vᵀ V_tᵀ, with M_U, M_V [r_t, r_s].


def transform_factors(
    a_proj: Annotated[Array, "L k r_s"],
    b_proj: Annotated[Array, "L r_s k"],
    ut: Annotated[Array, "L m_t r_t"],
    vt: Annotated[Array, "L n_t r_t"],
    m_u: Annotated[Array, "L r_t r_s"],
    m_v: Annotated[Array, "L r_t r_s"],
) -> tuple[Annotated[Array, "L k n_t"], Annotated[Array, "L m_t k"]]:
    """Target factors from the learned maps; `a_proj` = A_s V_s and `b_proj` = U_sᵀ B_s are fixed."""
    b_t = mm(ut, mm(m_u, b_proj))
    a_t = mm(mm(a_proj, jnp.swapaxes(m_v, -1, -2)), jnp.swapaxes(vt, -1, -2))
    return a_t, b_t


def _lstsq_right(y: Annotated[Array, "a k"], c: Annotated[Array, "r k"]) -> Annotated[Array, "a r"]:
    """argmin_M ‖M c − y‖_F, minimum-norm: M = y c⁺ (pinv by SVD, singular values below round-off dropped)."""
    u, s, vt = thin_svd(c)  # c [r, k] = u diag(s) vt
    tol = jnp.finfo(jnp.float32).eps * max(c.shape) * jnp.max(s, initial=0.0)
    s_inv = jnp.where(s > tol, 1.0 / jnp.where(s > tol, s, 1.0), 0.0)
    return mm(mm(y, vt.T) * s_inv, u.T)


def transform_init(
    a_proj: Annotated[Array, "k r_s"],
    b_proj: Annotated[Array, "r_s k"],
    ut: Annotated[Array, "m_t r_t"],
    vt: Annotated[Array, "n_t r_t"],
    a_init: Annotated[Array, "k n_t"],
    b_init: Annotated[Array, "m_t k"],
) -> tuple[Annotated[Array, "r_t r_s"], Annotated[Array, "r_t r_s"]]:
    """One layer's (M_U, M_V) whose factors are the least-squares closest to U_tU_tᵀ B_init and
    A_init V_tV_tᵀ: exactly those when their rows lie in the span the source factors reach
    (cross_lora and lora_x on equal widths), the best such approximation otherwise."""
    # B_t = U_t M_U C with C = U_sᵀ B_s: M_U = (U_tᵀ B_init) C⁺.
    m_u = _lstsq_right(mm(ut.T, b_init), b_proj)
    # A_t = D M_Vᵀ V_tᵀ with D = A_s V_s: M_Vᵀ = D⁺ (A_init V_t), i.e. M_V = (A_init V_t)ᵀ (Dᵀ)⁺.
    m_v = _lstsq_right(mm(a_init, vt).T, a_proj.T)
    return m_u, m_v
