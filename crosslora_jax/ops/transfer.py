"""The three transfer methods of docs/method.md in factored form, vmapped over stacked layers.

Legend: L layers, m out, n in, k LoRA rank, r_s / r_t effective SVD ranks of source / target,
p = min(m_s, m_t), q = min(n_s, n_t). ΔW = γ·B·A is never formed; γ is unchanged by every
method, so only B and A are mapped.
"""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from crosslora_jax._options import check_choice
from crosslora_jax.ops._linalg import crop_or_pad, mm, thin_svd_via_qr

Method = Literal["cross_lora", "lora_x", "truncate"]
METHODS: tuple[str, ...] = typing.get_args(Method)


class Diagnostics(NamedTuple):
    """Per-layer report values; norms are ‖B·A‖_F without γ (it cancels in the ratio).

    `in_subspace_norm` is ‖U_sU_sᵀ·B_sA_s·V_sV_sᵀ‖_F: the part of the source update inside the
    source weight's top-r column and row spaces. The projections keep at most that part, so
    in_subspace_norm / source_norm explains a norm ratio below 1 even for identical models.
    """

    phi_u: Annotated[Array, " L"]
    phi_v: Annotated[Array, " L"]
    chance_u: Annotated[Array, " L"]
    chance_v: Annotated[Array, " L"]
    source_norm: Annotated[Array, " L"]
    target_norm: Annotated[Array, " L"]
    in_subspace_norm: Annotated[Array, " L"]


def _range_basis(x: Annotated[Array, "p r"], orthonormal: bool) -> tuple[Array, Array, Array]:
    """x = Q diag(s) Wᵀ with singular values below round-off zeroed.

    `orthonormal` is a trace-time fact: uncropped singular-vector blocks are exactly that, so
    Q = x, s = 1, W = I and no SVD is needed (the common equal-size case costs nothing).
    """
    if orthonormal:
        r = x.shape[1]
        return x, jnp.ones((r,), x.dtype), jnp.eye(r, dtype=x.dtype)
    q, s, wt = thin_svd_via_qr(x)  # crops are tall: p up to 8192, r = 320
    tol = jnp.finfo(jnp.float32).eps * max(x.shape) * jnp.max(s, initial=0.0)
    return q, jnp.where(s > tol, s, 0.0), wt


def _pinv_apply(basis: tuple[Array, Array, Array], y: Annotated[Array, "p c"]) -> Annotated[Array, "r c"]:
    """x⁺ y from the SVD of x (minimum-norm: zeroed singular values stay zero)."""
    q, s, wt = basis
    s_inv = jnp.where(s > 0, 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
    return mm(wt.T * s_inv, mm(q.T, y))


def _phi(basis_s: tuple[Array, Array, Array], basis_t: tuple[Array, Array, Array], p: int) -> tuple[Array, Array]:
    (qs, ss, _), (qt, st, _) = basis_s, basis_t
    overlap = mm((qs * (ss > 0)).T, qt * (st > 0))
    r_s, r_t = qs.shape[1], qt.shape[1]
    phi = jnp.sum(jnp.square(overlap)) / min(r_s, r_t)
    return phi, jnp.asarray(min(1.0, max(r_s, r_t) / p), jnp.float32)


def align(us_bar: Annotated[Array, "p r_s"], ut_bar: Annotated[Array, "p r_t"]) -> Annotated[Array, "r_s r_t"]:
    """LoRA-Align: P = argmin ‖Ū_s P − Ū_t‖_F = Ū_s⁺ Ū_t, minimum-norm when Ū_s is rank-deficient."""
    return _pinv_apply(_range_basis(us_bar, orthonormal=False), ut_bar)


def similarity(xs: Annotated[Array, "p r_s"], xt: Annotated[Array, "p r_t"]) -> tuple[Array, Array]:
    """φ = ‖orth(X_s)ᵀ orth(X_t)‖_F² / min(r_s, r_t) ∈ [0, 1], and its chance level max(r)/p."""
    return _phi(_range_basis(xs, orthonormal=False), _range_basis(xt, orthonormal=False), xs.shape[0])


def _factored_norm(a: Annotated[Array, "k n"], b: Annotated[Array, "m k"]) -> Array:
    # ‖BA‖_F² = Σ (BᵀB) ∘ (AAᵀ): k×k work instead of m×n.
    return jnp.sqrt(jnp.maximum(jnp.sum(mm(b.T, b) * mm(a, a.T)), 0.0))


def _cross_lora(a_s, b_s, us, vs, ut, vt, bases):  # noqa: ANN001, ANN202 — shapes in `transfer_layer`
    p, q = min(us.shape[0], ut.shape[0]), min(vs.shape[0], vt.shape[0])
    (us_basis, _), (vs_basis, _) = bases
    u_al = mm(us[:p], _pinv_apply(us_basis, ut[:p]))  # Ũ = Ū_s P_U, P_U = Ū_s⁺ Ū_t  [p, r_t]
    v_al = mm(vs[:q], _pinv_apply(vs_basis, vt[:q]))  # Ṽ = V̄_s P_V  [q, r_t]
    k = a_s.shape[0]
    b_t = crop_or_pad(mm(u_al, mm(u_al.T, b_s[:p])), ut.shape[0], k)
    a_t = crop_or_pad(mm(mm(a_s[:, :q], v_al), v_al.T), k, vt.shape[0])
    return a_t, b_t


def _lora_x(a_s, b_s, us, vs, ut, vt, bases):  # noqa: ANN001, ANN202, ARG001
    k = a_s.shape[0]
    b_t = mm(ut, mm(ut.T, crop_or_pad(b_s, ut.shape[0], k)))
    a_t = mm(mm(crop_or_pad(a_s, k, vt.shape[0]), vt), vt.T)
    return a_t, b_t


def _pad_factors(a_s: Array, b_s: Array, m_t: int, n_t: int) -> tuple[Array, Array]:
    """`truncate`'s whole rule: A_t = pad(A_s, k, n_t), B_t = pad(B_s, m_t, k)."""
    k = a_s.shape[0]
    return crop_or_pad(a_s, k, n_t), crop_or_pad(b_s, m_t, k)


def _truncate(a_s, b_s, us, vs, ut, vt, bases):  # noqa: ANN001, ANN202, ARG001
    return _pad_factors(a_s, b_s, ut.shape[0], vt.shape[0])


_METHOD_FNS: dict[Method, typing.Callable] = {"cross_lora": _cross_lora, "lora_x": _lora_x, "truncate": _truncate}


def transfer_layer(
    method: Method,
    a_s: Annotated[Array, "k n_s"],
    b_s: Annotated[Array, "m_s k"],
    us: Annotated[Array, "m_s r_s"],
    vs: Annotated[Array, "n_s r_s"],
    ut: Annotated[Array, "m_t r_t"],
    vt: Annotated[Array, "n_t r_t"],
) -> tuple[Annotated[Array, "k n_t"], Annotated[Array, "m_t k"], Diagnostics]:
    """One layer: the target factors (A_t, B_t) and the diagnostics of the report."""
    a_s, b_s = a_s.astype(jnp.float32), b_s.astype(jnp.float32)
    p, q = min(us.shape[0], ut.shape[0]), min(vs.shape[0], vt.shape[0])
    # One orthonormalisation per side, shared by LoRA-Align and the similarity gate.
    bases = (
        (_range_basis(us[:p], us.shape[0] == p), _range_basis(ut[:p], ut.shape[0] == p)),
        (_range_basis(vs[:q], vs.shape[0] == q), _range_basis(vt[:q], vt.shape[0] == q)),
    )
    a_t, b_t = _METHOD_FNS[method](a_s, b_s, us, vs, ut, vt, bases)
    phi_u, chance_u = _phi(*bases[0], p)
    phi_v, chance_v = _phi(*bases[1], q)
    in_subspace = _factored_norm(mm(a_s, vs), mm(us.T, b_s))  # U_s, V_s have orthonormal columns
    diag = Diagnostics(
        phi_u, phi_v, chance_u, chance_v, _factored_norm(a_s, b_s), _factored_norm(a_t, b_t), in_subspace
    )
    return a_t, b_t, diag


@functools.partial(jax.jit, static_argnames=("method",))
def transfer_stack(
    method: Method,
    a_s: Annotated[Array, "L k n_s"],
    b_s: Annotated[Array, "L m_s k"],
    us: Annotated[Array, "L m_s r_s"],
    vs: Annotated[Array, "L n_s r_s"],
    ut: Annotated[Array, "L m_t r_t"],
    vt: Annotated[Array, "L n_t r_t"],
) -> tuple[Annotated[Array, "L k n_t"], Annotated[Array, "L m_t k"], Diagnostics]:
    """`transfer_layer` over a stack of layers in one compiled call."""
    check_choice("method", method, METHODS)
    return jax.vmap(functools.partial(transfer_layer, method))(a_s, b_s, us, vs, ut, vt)


@functools.partial(jax.jit, static_argnames=("m_t", "n_t"))
def truncate_stack(
    a_s: Annotated[Array, "L k n_s"], b_s: Annotated[Array, "L m_s k"], m_t: int, n_t: int
) -> tuple[Annotated[Array, "L k n_t"], Annotated[Array, "L m_t k"], Annotated[Array, " L"], Annotated[Array, " L"]]:
    """`truncate` without subspaces: (A_t, B_t, ‖B_sA_s‖_F, ‖B_tA_t‖_F) per layer.

    The baseline needs no SVD; the pipeline takes this path unless the similarity gate is on.
    """

    def one(a: Array, b: Array) -> tuple[Array, Array, Array, Array]:
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        a_t, b_t = _pad_factors(a, b, m_t, n_t)
        return a_t, b_t, _factored_norm(a, b), _factored_norm(a_t, b_t)

    return jax.vmap(one)(a_s, b_s)
