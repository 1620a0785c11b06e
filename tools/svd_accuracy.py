"""Randomized vs exact truncated SVD: error in the transferred ΔW_t, subspace error, speed-up.

    python tools/svd_accuracy.py --out=table.md    # ~13 min on 2 cores; docs/svd_accuracy.md
    python tools/svd_accuracy.py --quick                              # tiny shapes, < 1 min

Per role, a source weight of Qwen2.5-1.5B's shape and a target of Llama-3.2-3B's shape, with the
power-law spectra of `crosslora_jax.synthetic.Spectrum` (default decay 0.6, knee 2 % of the
width; a slower `decay=0.3` stress case too), and a rank-16 LoRA. For each randomized setting
(rank, power iterations, oversampling) it reports the relative Frobenius error of ΔW_t = B_t·A_t
against the exact engine (cross_lora and lora_x), the projector distance of the source's top-r
left subspace ‖U_rU_rᵀ − U_eU_eᵀ‖_F / √(2r) (0 = same, 1 = orthogonal), and the SVD time ratio.
A related pair (target = source + 10 % noise, same shapes) shows the case where subspaces align.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from crosslora_jax.ops import SvdSettings, transfer_stack, truncated_svd
from crosslora_jax.synthetic import Spectrum, spectral_weight

QWEN = {"q": (1536, 1536), "k": (256, 1536), "v": (256, 1536), "o": (1536, 1536),
        "gate": (8960, 1536), "up": (8960, 1536), "down": (1536, 8960)}  # fmt: skip
LLAMA = {"q": (3072, 3072), "k": (1024, 3072), "v": (1024, 3072), "o": (3072, 3072),
         "gate": (8192, 3072), "up": (8192, 3072), "down": (3072, 8192)}  # fmt: skip
QUICK = {"q": (96, 96), "gate": (256, 96), "down": (96, 256)}


def timed_svd(w: np.ndarray, settings: SvdSettings, repeats: int = 1) -> tuple[object, float]:
    ids = np.zeros((1,), np.int32)
    compiled = truncated_svd.lower(w, ids, settings=settings).compile()  # compile outside the timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = jax.block_until_ready(compiled(w, ids))
        best = min(best, time.perf_counter() - started)
    return out, best


def delta(method: str, a, b, src, tgt) -> np.ndarray:
    a_t, b_t, _ = transfer_stack(method, a, b, src.u, src.v, tgt.u, tgt.v)
    return np.asarray(b_t[0], np.float64) @ np.asarray(a_t[0], np.float64)


def rel(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def projector_distance(u1: np.ndarray, u2: np.ndarray) -> float:
    u1, u2 = np.asarray(u1[0], np.float64), np.asarray(u2[0], np.float64)
    r = u1.shape[1]
    # ‖P1 − P2‖_F² = 2r − 2‖U1ᵀU2‖_F² for projectors of equal rank r.
    return float(np.sqrt(max(2 * r - 2 * np.sum((u1.T @ u2) ** 2), 0.0) / (2 * r)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rank", type=int, default=320)
    parser.add_argument("--out", default=None)
    parser.add_argument("--roles", default="q,gate,down", help="roles to measure (k/v are small; up is gate's shape)")
    parser.add_argument("--power_iters", default="2,4,8")
    parser.add_argument("--oversample", type=int, default=16)
    args = parser.parse_args()
    rank = 24 if args.quick else args.rank
    src_shapes, tgt_shapes = (QUICK, QUICK) if args.quick else (QWEN, LLAMA)
    if not args.quick:
        src_shapes = {r: src_shapes[r] for r in args.roles.split(",")}
    iters_list = [1, 4] if args.quick else [int(x) for x in args.power_iters.split(",")]
    settings_grid = [(i, args.oversample) for i in iters_list]
    spectra = {"decay 0.6 (default)": Spectrum(), "decay 0.3 (stress)": Spectrum(decay=0.3)}
    if args.quick:
        spectra.pop("decay 0.3 (stress)")
    rng = np.random.default_rng(0)
    lines = [
        f"SVD rank {rank}; {'quick shapes' if args.quick else 'Qwen2.5-1.5B source, Llama-3.2-3B target shapes'}; "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}.",
        "",
        "| spectrum | pair | power it. | oversample | rank-r energy (src) | subspace dist (src U) | "
        "ΔW_t err cross_lora | ΔW_t err lora_x | SVD time exact / randomized |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for spec_name, spectrum in spectra.items():
        for pair in ("independent", "related (+10 % noise)"):
            if "stress" in spec_name and pair != "independent":
                continue
            stats: dict[tuple[int, int], list] = {s: [] for s in settings_grid}
            energies = []
            for role, (m_s, n_s) in src_shapes.items():
                w_s = spectral_weight(rng, m_s, n_s, spectrum)[None]
                if pair == "independent":
                    w_t = spectral_weight(rng, *tgt_shapes[role], spectrum)[None]
                else:
                    noise = rng.standard_normal(w_s.shape).astype(np.float32)
                    w_t = w_s + 0.1 * noise * np.linalg.norm(w_s) / np.linalg.norm(noise)
                a = (rng.standard_normal((1, 16, n_s)) / np.sqrt(n_s)).astype(np.float32)
                b = (rng.standard_normal((1, m_s, 16)) * 0.05).astype(np.float32)
                exact = SvdSettings(rank=rank, engine="exact")
                (src_e, t_src_e), (tgt_e, t_tgt_e) = timed_svd(w_s, exact), timed_svd(w_t, exact)
                energies.append(float(src_e.energy[0]))
                ref = {m: delta(m, a, b, src_e, tgt_e) for m in ("cross_lora", "lora_x")}
                for iters, over in settings_grid:
                    rs = SvdSettings(rank=rank, engine="randomized", power_iters=iters, oversample=over)
                    (src_r, t_src_r), (tgt_r, t_tgt_r) = timed_svd(w_s, rs), timed_svd(w_t, rs)
                    stats[(iters, over)].append((
                        projector_distance(src_r.u, src_e.u),
                        rel(delta("cross_lora", a, b, src_r, tgt_r), ref["cross_lora"]),
                        rel(delta("lora_x", a, b, src_r, tgt_r), ref["lora_x"]),
                        t_src_e + t_tgt_e, t_src_r + t_tgt_r,
                    ))  # fmt: skip
                print(f"  {spec_name} / {pair} / {role} done", flush=True)
            for (iters, over), rows in stats.items():
                dist, e_cross, e_x, t_e, t_r = (np.asarray(c) for c in zip(*rows, strict=True))
                lines.append(
                    f"| {spec_name} | {pair} | {iters} | {over} | {np.mean(energies):.2f} | "
                    f"{dist.mean():.3f} (max {dist.max():.3f}) | {e_cross.mean():.3f} (max {e_cross.max():.3f}) | "
                    f"{e_x.mean():.3f} (max {e_x.max():.3f}) | {t_e.sum() / t_r.sum():.1f}× |"
                )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
