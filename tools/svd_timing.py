"""Time the SVD routes available to the exact engine, and the randomized engine, on one device.

    python tools/svd_timing.py --shapes=8b --layers=4        # what docs/benchmark.md's GPU section quotes
    python tools/svd_timing.py --shapes=tiny --layers=2      # seconds, any machine
    python tools/svd_timing.py --shapes=1.5b-3b --layers=1 --repeats=2 --projection_only  # unequal widths

For each weight shape of the pair (source and target, all 7 roles; equal shapes counted once) it
times, on a stack of `--layers` matrices, compiled beforehand (compile time is its own column),
best of `--repeats`: the projection (`transfer_stack` cross_lora, rank-16 LoRA),
`jax.lax.linalg.svd` with each algorithm XLA offers on this backend, an eigh of the Gram matrix
(the classic shortcut, accurate only for the leading σ), and `truncated_svd` with the randomized
settings given. Rows are seconds per matrix; the last column of each randomized row is its
subspace distance to the exact top-r (0 = same, 1 = orthogonal), so speed is never read without
accuracy. Weights are synthetic power-law spectra (crosslora_jax.synthetic.Spectrum) drawn on
the device.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from _randomized_arg import randomized_settings

from crosslora_jax.ops import SvdSettings, transfer_stack, truncated_svd
from crosslora_jax.ops import svd as svd_module
from crosslora_jax.ops._linalg import qr_q
from crosslora_jax.synthetic import Spectrum

SHAPES = {
    # Llama-3-8B and Llama-3.1-8B share every per-layer shape.
    "8b": {"q": (4096, 4096), "k": (1024, 4096), "o": (4096, 4096), "gate": (14336, 4096), "down": (4096, 14336)},
    "1.5b-3b": {"q": (1536, 1536), "k": (256, 1536), "gate": (8960, 1536), "down": (1536, 8960),
                "q_t": (3072, 3072), "k_t": (1024, 3072), "gate_t": (8192, 3072), "down_t": (3072, 8192)},
    "tiny": {"q": (96, 96), "gate": (256, 96), "down": (96, 256)},
}  # fmt: skip
# Source → target shapes per role where widths differ: cross_lora crops and orthonormalises.
PAIRS = {
    "1.5b-3b": {"q": ((1536, 1536), (3072, 3072)), "k": ((256, 1536), (1024, 3072)),
                "gate": ((8960, 1536), (8192, 3072)), "down": ((1536, 8960), (3072, 8192))},
    "tiny": {"gate": ((256, 96), (192, 128))},
}  # fmt: skip


def spectral_stack(key: jax.Array, layers: int, m: int, n: int, spectrum: Spectrum) -> jax.Array:
    """[L, m, n] float32 with Haar-random singular vectors and `spectrum`, drawn on the device."""
    r = min(m, n)
    sigma = jnp.asarray(spectrum.values(r), jnp.float32)

    def one(k: jax.Array) -> jax.Array:
        ku, kv = jax.random.split(k)
        # qr_q, not jnp's QR: two batched QRs in one program can deadlock XLA's CPU pool
        # (tools/lapack_pool_hang.py); this draw hung the tiny smoke test in CI.
        u = qr_q(jax.random.normal(ku, (m, r)))
        v = qr_q(jax.random.normal(kv, (n, r)))
        return (u * sigma) @ v.T

    return jax.jit(jax.vmap(one))(jax.random.split(key, layers))


COMPILE_S: list[float] = []  # compile time of the last best_time call, for its row


def best_time(fn: Callable, *x: jax.Array, repeats: int) -> tuple[object, float]:
    started = time.perf_counter()
    compiled = jax.jit(fn).lower(*x).compile()
    COMPILE_S[:] = [time.perf_counter() - started]
    out, best = None, float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = jax.block_until_ready(compiled(*x))
        best = min(best, time.perf_counter() - started)
    return out, best


def routes(rank: int) -> dict[str, Callable]:
    algos = jax.lax.linalg.SvdAlgorithm
    out: dict[str, Callable] = {}
    for name in ("DEFAULT", "QR", "JACOBI", "POLAR", "DIVIDE_AND_CONQUER"):
        algo = getattr(algos, name)
        out[f"lax svd {name}"] = lambda w, a=algo: jax.vmap(
            lambda x: jax.lax.linalg.svd(x, full_matrices=False, algorithm=a)
        )(w)

    out["eigh of Gram"] = functools.partial(gram_vectors, rank=rank)
    return out


def gram_matrix(w: jax.Array) -> jax.Array:
    """W Wᵀ (m ≤ n) or Wᵀ W per layer: the smaller side's Gram matrix, in float32."""
    small = w if w.shape[1] <= w.shape[2] else jnp.swapaxes(w, 1, 2)
    return jnp.einsum("lij,lkj->lik", small, small, precision=jax.lax.Precision.HIGHEST)


def gram_vectors(w: jax.Array, rank: int) -> jax.Array:
    """Top-`rank` eigenvectors of W Wᵀ (m ≤ n: U) or Wᵀ W (V), largest first."""
    g = gram_matrix(w)
    r = min(rank, g.shape[-1])
    return jnp.linalg.eigh(g)[1][..., ::-1][..., :r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--randomized", type=randomized_settings, default="2:16,4:320,8:320", help="power_iters:oversample pairs"
    )
    parser.add_argument("--out", default=None)
    parser.add_argument("--projection_only", action="store_true",
                        help="only the projection on unequal widths (--shapes=1.5b-3b or tiny), split into its parts")  # fmt: skip
    parser.add_argument("--lax_routes", action=argparse.BooleanOptionalAction, default=True,
                        help="also time every jax.lax.linalg.svd algorithm and the Gram eigh")  # fmt: skip
    args = parser.parse_args()
    device = jax.devices()[0]
    lines = [
        f"`python tools/svd_timing.py {' '.join(a for a in __import__('sys').argv[1:] if not a.startswith('--out'))}`",
        "",
        f"{device.platform} device: {getattr(device, 'device_kind', '?')}; jax {jax.__version__}; stacks of "
        f"{args.layers} layers; SVD rank {args.rank}; seconds per matrix (best of {args.repeats}).",
        "",
        "| shape | route | s / matrix | compile s | subspace dist to exact |",
        "|---|---|---|---|---|",
    ]
    key = jax.random.key(0)
    if args.projection_only:
        lines += projection_rows(PAIRS[args.shapes], args.layers, args.rank, args.repeats)
        print("\n".join(lines))
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return
    for name, (m, n) in SHAPES[args.shapes].items():
        key, sub = jax.random.split(key)
        w = spectral_stack(sub, args.layers, m, n, Spectrum())
        ids = jnp.arange(args.layers, dtype=jnp.int32)
        exact, t = best_time(lambda x, ids=ids: truncated_svd(x, ids, SvdSettings(rank=args.rank, engine="exact")), w,
                             repeats=args.repeats)  # fmt: skip
        lines.append(f"| {name} {m}×{n} | truncated_svd exact (this backend's route) | {t / args.layers:.3f} | "
                     f"{COMPILE_S[0]:.1f} | 0 |")  # fmt: skip
        gram, t = best_time(lambda x, ids=ids: truncated_svd(x, ids, SvdSettings(rank=args.rank, engine="gram")), w,
                            repeats=args.repeats)  # fmt: skip
        lines.append(f"| {name} {m}×{n} | truncated_svd gram (the default engine) | {t / args.layers:.3f} | "
                     f"{COMPILE_S[0]:.1f} | {distance(exact.u, gram.u):.3f} |")  # fmt: skip
        # The same engine with the Gram matrix's full eigh (how gram ran before block Lanczos);
        # seed 1 only gives it its own compiled program, the full-eigh path draws nothing.
        with mock.patch.object(svd_module, "_KRYLOV_MAX_FRACTION", 0.0):
            _, t = best_time(lambda x, ids=ids: truncated_svd(x, ids, SvdSettings(rank=args.rank, engine="gram", seed=1)),
                             w, repeats=args.repeats)  # fmt: skip
        lines.append(f"| {name} {m}×{n} | truncated_svd gram, full eigh of the Gram matrix | {t / args.layers:.3f} | "
                     f"{COMPILE_S[0]:.1f} | — |")  # fmt: skip
        # The Gram product alone (d²·N multiply-adds): what the gram engine cannot go below.
        _, t = best_time(lambda x: gram_matrix(x), w, repeats=args.repeats)
        lines.append(f"| {name} {m}×{n} | Gram product only (gram's floor) | {t / args.layers:.3f} | "
                     f"{COMPILE_S[0]:.1f} | — |")  # fmt: skip
        a = jax.random.normal(key, (args.layers, 16, n)) / np.sqrt(n)
        b = jax.random.normal(key, (args.layers, m, 16)) * 0.05
        _, t = best_time(lambda a, b, u, v: transfer_stack("cross_lora", a, b, u, v, u, v), a, b, exact.u, exact.v,
                         repeats=args.repeats)  # fmt: skip
        lines.append(f"| {name} {m}×{n} | transfer_stack cross_lora (the projection, per layer) | "
                     f"{t / args.layers:.4f} | {COMPILE_S[0]:.1f} | — |")  # fmt: skip
        for route, fn in (routes(args.rank) if args.lax_routes else {}).items():
            try:
                out, t = best_time(fn, w, repeats=args.repeats)
                if route == "eigh of Gram":
                    dist = distance(exact.u if m <= n else exact.v, out)
                else:
                    dist = distance(exact.u, out[0][..., : exact.u.shape[-1]])
                dist = f"{dist:.3f}"
                lines.append(f"| {name} {m}×{n} | {route} | {t / args.layers:.3f} | {COMPILE_S[0]:.1f} | {dist} |")
            except Exception as e:
                lines.append(f"| {name} {m}×{n} | {route} | unsupported: {type(e).__name__} | — | — |")
        for iters, over in args.randomized:
            settings = SvdSettings(rank=args.rank, engine="randomized", power_iters=iters, oversample=over)
            approx, t = best_time(lambda x, s=settings, ids=ids: truncated_svd(x, ids, s), w, repeats=args.repeats)
            lines.append(f"| {name} {m}×{n} | randomized p={iters} oversample={over} | {t / args.layers:.3f} | "
                         f"{COMPILE_S[0]:.1f} | {distance(exact.u, approx.u):.3f} |")  # fmt: skip
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


def projection_rows(pairs: dict, layers: int, rank: int, repeats: int) -> list[str]:
    """transfer_stack cross_lora on unequal source/target shapes (random orthonormal bases), and the
    orthonormalisation of one cropped block it does: LAPACK's SVD of the tall p×r crop (what
    `_range_basis` runs) against an eigh of its r×r Gram matrix (the cheaper alternative)."""
    from crosslora_jax.ops._linalg import mm

    rng = np.random.default_rng(0)

    def bases(m: int) -> jax.Array:
        return jnp.asarray(np.stack([np.linalg.qr(rng.standard_normal((m, rank)))[0] for _ in range(layers)]),
                           jnp.float32)  # fmt: skip

    out = []
    for role, ((m_s, n_s), (m_t, n_t)) in pairs.items():
        r_s, r_t = min(rank, m_s, n_s), min(rank, m_t, n_t)
        us, vs = bases(m_s)[..., :r_s], bases(n_s)[..., :r_s]
        ut, vt = bases(m_t)[..., :r_t], bases(n_t)[..., :r_t]
        a = jnp.asarray(rng.standard_normal((layers, 16, n_s)), jnp.float32)
        b = jnp.asarray(rng.standard_normal((layers, m_s, 16)), jnp.float32)
        label = f"{role} {m_s}×{n_s} → {m_t}×{n_t}"
        _, t = best_time(lambda *x: transfer_stack("cross_lora", *x), a, b, us, vs, ut, vt, repeats=repeats)
        out.append(
            f"| {label} | transfer_stack cross_lora (whole projection) | {t / layers:.3f} | {COMPILE_S[0]:.1f} | — |"
        )
        p = min(m_s, m_t)
        crop = (us if m_s > p else ut)[:, :p]  # the cropped side of the output basis
        _, t = best_time(jax.vmap(lambda x: jnp.linalg.svd(x, full_matrices=False)), crop, repeats=repeats)
        out.append(f"| {label} | SVD of the cropped {p}×{crop.shape[-1]} block (_range_basis) | {t / layers:.3f} | "
                   f"{COMPILE_S[0]:.1f} | — |")  # fmt: skip
        _, t = best_time(jax.vmap(lambda x: jnp.linalg.eigh(mm(x.T, x))), crop, repeats=repeats)
        out.append(f"| {label} | eigh of that block's {crop.shape[-1]}×{crop.shape[-1]} Gram matrix | "
                   f"{t / layers:.3f} | {COMPILE_S[0]:.1f} | — |")  # fmt: skip
        print(out[-1], flush=True)
    return out


def distance(u1: jax.Array, u2: jax.Array) -> float:
    """Mean over layers of ‖P1 − P2‖_F / √(2r) for the rank-r projectors, in float64."""
    out = []
    for a, b in zip(np.asarray(u1, np.float64), np.asarray(u2, np.float64), strict=True):
        r = a.shape[1]
        out.append(np.sqrt(max(2 * r - 2 * np.sum((a.T @ b) ** 2), 0.0) / (2 * r)))
    return float(np.mean(out))


if __name__ == "__main__":
    main()
