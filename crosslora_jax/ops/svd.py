"""Rank-r truncated SVD of a stack of weights, vmapped over layers, by one of three engines:

- `gram` (default): the top eigenvectors of the Gram matrix of the smaller side (a full eigh, or
  block Lanczos where that side is at least four times the Krylov basis), then one subspace
  iteration and a Rayleigh–Ritz step against W itself (`_gram`). The full-eigh route is
  backward-stable on every spectrum tested; block Lanczos is not on flat bulks (issue 22: up to
  17 % off in ΔW_t when it ran on 3072-wide weights), which the check below catches, and the
  pipeline then recomputes that weight with `exact`.
- Every engine's result comes with `SvdCheck` (`truncated_svd_with_check`): the residual against
  W (a backward error), an estimated gap at r, Wedin's bound and a flag.
- `exact`: LAPACK's (CPU) or XLA's QDWH (GPU) SVD of the whole matrix.
- `randomized`: a Halko–Martinsson–Tropp sketch; fast and, at its defaults, inaccurate at r = 320.

Shapes: L layers, m out features, n in features, r requested rank, r_e = min(r, m, n).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Annotated, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax

from crosslora_jax._options import check_options, option
from crosslora_jax.ops._linalg import eigh, mm, qr_q, thin_svd, thin_svd_via_qr

SvdEngine = Literal["gram", "exact", "randomized"]
ENGINES: tuple[str, ...] = typing.get_args(SvdEngine)


@dataclasses.dataclass(frozen=True)
class SvdSettings:
    """Everything that changes the computed subspaces (and so keys the subspace cache)."""

    rank: int = option(320, "Rank r of the truncated SVD of each base weight.", flag="svd_rank", low=1)
    engine: SvdEngine = option(
        "gram",
        "SVD engine: gram (eigh or block Lanczos on the smaller Gram matrix, refined against W; every "
        "result is checked against W and one the check flags is recomputed by exact), exact (full SVD), "
        "randomized (fast, inaccurate at its defaults; checked and reported, not recomputed).",
        flag="svd",
    )
    oversample: int = option(16, "Randomized SVD: extra sketch columns.", flag="svd_oversample", low=0)
    power_iters: int = option(2, "Randomized SVD: power iterations.", flag="svd_power_iters", low=0)
    seed: int = option(
        0, "Randomized SVD and gram's Krylov start: seed (results are deterministic per seed).", flag="svd_seed"
    )

    def __post_init__(self) -> None:
        check_options(self)


class Subspace(NamedTuple):
    """Truncated factors W ≈ U diag(s) Vᵀ, plus the share of ‖W‖_F² they capture."""

    u: Annotated[Array, "L m r_e"]
    s: Annotated[Array, "L r_e"]
    v: Annotated[Array, "L n r_e"]
    energy: Annotated[Array, " L"]


class SvdCheck(NamedTuple):
    """A-posteriori accuracy of each layer's truncated SVD Û Σ̂ V̂ᵀ of W, relative to σ̂₁.

    - `residual` = ‖[W V̂ − Û Σ̂; Wᵀ Û − V̂ Σ̂]‖₂ / σ̂₁, measured (in float32) against W itself:
      Û Σ̂ V̂ᵀ are exact singular triplets of a W + E with ‖E‖₂ of about this size, whatever
      route produced them. A backward-stable float32 SVD earns a few ε₃₂ here.
    - `gap_estimate` = (σ̂_r − σ̂_{r+1}) / σ̂₁, with σ̂_{r+1} the next value the route already has
      (the full SVD's, or the oversampled Rayleigh–Ritz step's: a lower bound on σ_{r+1}, so the
      gap may be over-estimated; 0 when r_e = min(m, n) has no next value, then the gap is σ̂_r).
      An estimate, not a bound.
    - `bound` = residual / gap_estimate: Wedin's bound on sin of the largest principal angle between
      the computed and the true top-r subspaces (U and V), as good as the gap estimate; 0 where the
      residual is 0, inf where the estimated gap is 0 (top-r subspace not defined).
    - `flagged`: the residual exceeds what a backward-stable float32 SVD earns at this size
      (`residual_tolerance`); the pipeline recomputes a flagged gram layer with `exact`.
    """

    residual: Annotated[Array, " L"]
    gap_estimate: Annotated[Array, " L"]
    bound: Annotated[Array, " L"]
    flagged: Annotated[Array, " L"]


class CheckedSubspace(NamedTuple):
    """`truncated_svd`'s result, whether each input layer was finite (no NaN/Inf), and its `SvdCheck`."""

    subspace: Subspace
    finite: Annotated[Array, " L"]
    check: SvdCheck


def effective_rank(rank: int, m: int, n: int) -> int:
    return min(rank, m, n)


def _thin_svd(x: Annotated[Array, "a b"]) -> tuple[Array, Array, Array]:
    # On GPU, cuSOLVER's gesvd takes ~1.4 s for one 4096×14336 matrix on an H100; the QDWH polar
    # route is as exact and ~5× faster (tools/svd_timing.py, docs/benchmark.md). CPUs lack it.
    algorithm = lax.linalg.SvdAlgorithm.POLAR if jax.default_backend() == "gpu" else None
    return thin_svd(x, algorithm)


# Engines return (U [m, r_e], σ [r_e], V [n, r_e], σ̂_{r_e+1}): the next singular value the route
# computed anyway (0 where it has none), for `SvdCheck.gap_estimate`.
_Triplets = tuple[Array, Array, Array, Array]


def _next_value(s: Annotated[Array, " c"], r: int) -> Array:
    return s[r] if s.shape[0] > r else jnp.zeros((), s.dtype)


def _exact(w: Annotated[Array, "m n"], rank: int) -> _Triplets:
    u, s, vt = _thin_svd(w)
    r = effective_rank(rank, *w.shape)
    return u[:, :r], s[:r], vt[:r].T, _next_value(s, r)


def _randomized(w: Annotated[Array, "m n"], rank: int, key: Array, oversample: int, power_iters: int) -> _Triplets:
    m, n = w.shape
    r = effective_rank(rank, m, n)
    sketch = min(r + oversample, m, n)
    if sketch == min(m, n):  # the sketch would span everything: exact is cheaper and exact
        return _exact(w, rank)
    q = qr_q(mm(w, jax.random.normal(key, (n, sketch), jnp.float32)))
    for _ in range(power_iters):  # re-orthonormalise each half-step so small σ survive in f32
        q = qr_q(mm(w, qr_q(mm(w.T, q))))
    ub, s, vt = _thin_svd(mm(q.T, w))
    return mm(q, ub[:, :r]), s[:r], vt[:r].T, _next_value(s, r)


# Extra Gram eigenvectors carried into the Rayleigh–Ritz step: the top-r subspace then only has to
# be separated from directions past r + this, where the spectrum has fallen further.
_GRAM_OVERSAMPLE = 64


# Where the Gram matrix is large against the basis Krylov needs, block Lanczos replaces its full
# eigh: blocks of this width, this many blocks past those covering the wanted s (the polynomial
# degree that separates σ_r from σ_{r+block} on slowly decaying spectra), and only where the
# basis is at most this fraction of d. Issue 22: at 0.5 (the 3072-wide weights at r = 320) this
# route missed top directions of flat random-matrix bulks (σ_320/σ_384 ≈ 1.04) in every case
# measured, so the check sent each such weight on to the exact SVD (Lanczos ~1.4 s + exact
# 3.8–9.9 s per matrix, against 1.6–2.2 s for the full eigh, which passes the check there). At
# 0.25 no shape of the paper's or the 8B pairs takes it (r = 320 needs d ≥ 4608); where it runs,
# the check guards it.
_KRYLOV_BLOCK = 64
_KRYLOV_DEPTH = 12
_KRYLOV_MAX_FRACTION = 0.25


def engine_constants(settings: SvdSettings) -> dict[str, int | float]:
    """Fixed parameters of `settings.engine` that change its results: part of the cache key."""
    if settings.engine != "gram":
        return {}
    return {"gram_oversample": _GRAM_OVERSAMPLE, "gram_krylov_block": _KRYLOV_BLOCK,
            "gram_krylov_depth": _KRYLOV_DEPTH, "gram_krylov_max_fraction": _KRYLOV_MAX_FRACTION}  # fmt: skip


def _krylov_size(d: int, s: int) -> int:
    """Columns of the block Krylov basis for the top s of d eigenvectors; 0 where a full eigh is used."""
    size = _KRYLOV_BLOCK * (-(-s // _KRYLOV_BLOCK) + _KRYLOV_DEPTH)
    return size if size <= _KRYLOV_MAX_FRACTION * d else 0


def route(settings: SvdSettings, m: int, n: int) -> str:
    """The route `settings.engine` takes on an m×n weight: "gram-eigh" or "gram-lanczos" (by the
    smaller side's size), "exact" or "randomized"."""
    if settings.engine != "gram":
        return settings.engine
    s = min(effective_rank(settings.rank, m, n) + _GRAM_OVERSAMPLE, min(m, n))
    return "gram-lanczos" if _krylov_size(min(m, n), s) else "gram-eigh"


def _top_eigenvectors(g: Annotated[Array, "d d"], s: int, key: Array) -> Annotated[Array, "d s"]:
    """A basis of (approximately) the top-s eigenspace of the symmetric PSD g.

    Full eigh where d is small against the Krylov basis; otherwise block Lanczos from a random
    start block with full re-orthogonalisation, then Rayleigh–Ritz on the basis. Its error is left to `_gram`'s
    refinement against W, which the contract tests hold to float32 accuracy.
    """
    d = g.shape[0]
    size = _krylov_size(d, s)
    if not size:
        return eigh(g)[1][:, d - s :]  # ascending
    q = qr_q(mm(g, jax.random.normal(key, (d, _KRYLOV_BLOCK), jnp.float32)))
    blocks, products = [q], []
    for _ in range(size // _KRYLOV_BLOCK - 1):
        products.append(mm(g, q))
        basis = jnp.concatenate(blocks, axis=1)
        q = products[-1]
        # Project and normalise twice: where the Krylov space is exhausted (rank-deficient or
        # flat spectra) the projected block is rounding noise, which one pass leaves far from
        # orthogonal to the basis; a second pass on unit columns fixes that to float32 ε.
        for _ in range(2):
            q = qr_q(q - mm(basis, mm(basis.T, q)))
        blocks.append(q)
    products.append(mm(g, q))
    # g·basis is the products already formed: Rayleigh–Ritz costs d·size² here, not another d²·size.
    basis = jnp.concatenate(blocks, axis=1)
    t = mm(basis.T, jnp.concatenate(products, axis=1))
    _, z = eigh((t + t.T) / 2)
    return mm(basis, z[:, -s:])


def _gram(w: Annotated[Array, "m n"], rank: int, key: Array) -> _Triplets:
    """Top-r SVD from the Gram matrix of the smaller side, refined against W.

    With a (d × N, d ≤ N) the smaller-side orientation of W: Q = top s = r + oversample
    eigenvectors of a aᵀ (d×d: one product, then a full eigh or, where d is large, block Lanczos
    started from `key`; `_top_eigenvectors`), Y = orth(aᵀ Q), then the
    thin SVD of a Y (d×s) gives U and V = Y Z. Squaring in float32 leaves Q wrong only in
    directions with σ near or below √ε·σ₁; the two products with W (not a aᵀ) shrink what Q
    holds outside the top-s space by (σ_{s+1}/σ_r)², and the final SVD separates the top r from
    the rest of the s without squaring. QR keeps Y orthonormal when W is rank-deficient (zero
    columns of aᵀ Q), so null directions get orthonormal vectors, as from LAPACK.
    """
    m, n = w.shape
    # Scale by a power of two near max|W| (exact in float32): the Gram matrix of weights near
    # 1e20 would overflow and of weights near 1e-20 underflow.
    scale = jnp.ldexp(jnp.float32(1.0), jnp.frexp(jnp.max(jnp.abs(w)))[1])
    scale = jnp.where(scale > 0, scale, 1.0)  # all-zero W, or subnormals flushed to zero
    a = (w if m <= n else w.T) / scale
    d = a.shape[0]
    r = effective_rank(rank, m, n)
    s = min(r + _GRAM_OVERSAMPLE, d)
    q = _top_eigenvectors(mm(a, a.T), s, key)
    y = qr_q(mm(a.T, q))  # [N, s]
    ux, sx, zt = thin_svd_via_qr(mm(a, y))  # [d, s], [s], [s, s]
    u, sigma, v = ux[:, :r], sx[:r] * scale, mm(y, zt[:r].T)
    nxt = _next_value(sx, r) * scale
    return (u, sigma, v, nxt) if m <= n else (v, sigma, u, nxt)


# What a backward-stable float32 SVD (LAPACK's, `exact`) leaves in `SvdCheck.residual`: its own
# backward error plus the rounding of W V̂ and Wᵀ Û, which are formed in float32 too. Measured
# (tools/svd_check_calibration.py, docs/svd_accuracy.md) on flat-bulk, power-law, steep and
# rank-deficient weights with smaller side 896–3072 and larger side up to 8960: 10–20 ε₃₂ for
# exact and for gram's full-eigh route, 7·10⁴–2·10⁵ ε₃₂ for the block-Lanczos results that miss
# top directions of flat bulks. The flag sits at 100 ε₃₂: 5× above the first, ~10³× below the
# second. (The float32 residual of LAPACK itself exceeds 10 ε₃₂, so a flag at 10 would fire on
# exact.)
_RESIDUAL_FLAG = 100.0


def residual_tolerance(m: int, n: int) -> float:
    """`SvdCheck.residual` above this flags an m×n weight's SVD as not backward-stable (relative
    to σ̂₁; the same for every shape measured, the argument is kept for a future dependence)."""
    del m, n
    return _RESIDUAL_FLAG * float(jnp.finfo(jnp.float32).eps)


def _check(w: Annotated[Array, "m n"], u: Array, s: Array, v: Array, s_next: Array) -> tuple[Array, ...]:
    """(residual, gap_estimate, bound) of `SvdCheck` for one layer."""
    s1 = s[0]
    safe = jnp.where(s1 > 0, s1, 1.0)
    wn, sn = w / safe, s / safe  # relative to σ̂₁, so neither squares below nor above float32's range
    r1 = mm(wn, v) - u * sn
    r2 = mm(wn.T, u) - v * sn
    # ‖[R1; R2]‖₂² is the top eigenvalue of R1ᵀR1 + R2ᵀR2 (r×r): cheap next to the products above.
    gram = mm(r1.T, r1) + mm(r2.T, r2)
    residual = jnp.sqrt(jnp.maximum(eigh((gram + gram.T) / 2)[0][-1], 0.0))
    gap = jnp.maximum(sn[-1] - s_next / safe, 0.0)
    bound = jnp.where(residual == 0, 0.0, residual / jnp.where(gap > 0, gap, 1.0))
    return residual, gap, jnp.where((gap > 0) | (residual == 0), bound, jnp.inf)


@functools.partial(jax.jit, static_argnames=("settings",))
def truncated_svd_with_check(
    w: Annotated[Array, "L m n"], layer_ids: Annotated[Array, " L"], settings: SvdSettings
) -> tuple[Subspace, SvdCheck]:
    """`truncated_svd` and each layer's `SvdCheck` (two more products with W per layer)."""
    w = w.astype(jnp.float32)

    def one(w1: Array, layer: Array) -> tuple[Array, ...]:
        key = jax.random.fold_in(jax.random.key(settings.seed), layer)
        if settings.engine == "gram":
            out = _gram(w1, settings.rank, key)
        elif settings.engine == "exact":
            out = _exact(w1, settings.rank)
        else:
            out = _randomized(w1, settings.rank, key, settings.oversample, settings.power_iters)
        return *out[:3], *_check(w1, *out)

    u, s, v, residual, gap, bound = jax.vmap(one)(w, layer_ids)
    # Divide by max|W| first: Σσ² of weights near 1e20 would overflow float32.
    peak = jnp.max(jnp.abs(w), axis=(1, 2))
    safe = jnp.where(peak > 0, peak, 1.0)
    kept = jnp.sum(jnp.square(s / safe[:, None]), axis=1)
    total = jnp.sum(jnp.square(w / safe[:, None, None]), axis=(1, 2))
    energy = jnp.where(peak > 0, kept / jnp.where(total > 0, total, 1.0), 1.0)
    flagged = residual > residual_tolerance(*w.shape[1:])
    return Subspace(u, s, v, energy), SvdCheck(residual, gap, bound, flagged)


@functools.partial(jax.jit, static_argnames=("settings",))
def truncated_svd(w: Annotated[Array, "L m n"], layer_ids: Annotated[Array, " L"], settings: SvdSettings) -> Subspace:
    """Truncated SVD of each layer. `layer_ids` (absolute layer numbers) seed the randomized
    engine (and gram's Krylov start block) per layer, so results do not depend on how layers are
    chunked or sharded. No accuracy check and no fallback here: `truncated_svd_with_check` gives
    the check; `transfer` recomputes flagged gram layers with `exact`."""
    return truncated_svd_with_check(w, layer_ids, settings)[0]  # XLA drops the unused check


@functools.partial(jax.jit, static_argnames=("settings",))
def checked_truncated_svd(
    w: Annotated[Array, "L m n"], layer_ids: Annotated[Array, " L"], settings: SvdSettings
) -> CheckedSubspace:
    """`truncated_svd_with_check` of weights in any float dtype, widened to float32 on the device,
    with a per-layer finiteness flag: a layer with NaN/Inf gives garbage factors and finite=False."""
    finite = jnp.all(jnp.isfinite(w), axis=tuple(range(1, w.ndim)))
    subspace, check = truncated_svd_with_check(w, layer_ids, settings)
    return CheckedSubspace(subspace, finite, check)
