"""Calibrate the SVD check's flag line: `SvdCheck.residual` of each engine at real shapes.

    python tools/svd_check_calibration.py --engines=exact,gram \\
        --cases=flat:3072x8192,flat:896x4864,flat:1536x8960,power:3072x8192,steep:3072x3072

One JSON line per (case, engine): the route taken, seconds (compile included), the residual in
units of ε₃₂ beside the flag line (`residual_tolerance`), the gap estimate, the bound and whether
it flagged, and the load average when it finished. Cases are `kind:MxN` with kind one of
flat (issue 22's flat bulk: Gaussian / √n times the column scale 1 + 4/(1 + j/32)), power
(σ_i = (1 + i/(0.02 d))^-0.6), power_slow (exponent 0.3), steep (σ over 6 decades) or rankdef
(rank 200, σ from 1 to 0.5); all bf16-rounded, r = `--rank`. Spectra other than flat are
G diag(σ) H with Gaussian G, H (the spectrum's shape, not its exact values, at any size cheaply).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from crosslora_jax.ops import svd as S

EPS = float(np.finfo(np.float32).eps)


def _flat(m: int, n: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((m, n), dtype=np.float32)
    return g / np.sqrt(n) * (1 + 4 / (1 + np.arange(n, dtype=np.float32) / 32))


def _spectrum(kind: str, d: int) -> np.ndarray:
    i = np.arange(d)
    return {
        "power": (1 + i / (0.02 * d)) ** -0.6,
        "power_slow": (1 + i / (0.02 * d)) ** -0.3,
        "steep": np.logspace(0, -6, d),
        "rankdef": np.where(i < 200, np.linspace(1, 0.5, d), 0.0),
    }[kind]


def weight(kind: str, m: int, n: int, seed: int) -> np.ndarray:
    if kind == "flat":
        w = _flat(m, n, seed)
    else:
        rng, d = np.random.default_rng(seed), min(m, n)
        g = rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(m)
        h = rng.standard_normal((d, n), dtype=np.float32) / np.sqrt(n)
        w = (g * _spectrum(kind, d).astype(np.float32)) @ h
    return w.astype(ml_dtypes.bfloat16).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="exact,gram")
    parser.add_argument("--cases", default="flat:1024x1536,power:1024x1536")
    parser.add_argument("--rank", type=int, default=320)
    args = parser.parse_args()
    for case in args.cases.split(","):
        kind, shape = case.split(":")
        m, n = map(int, shape.split("x"))
        w = weight(kind, m, n, 2)
        for engine in args.engines.split(","):
            settings = S.SvdSettings(rank=args.rank, engine=engine)
            started = time.perf_counter()
            _, check = S.truncated_svd_with_check(w[None], jnp.zeros(1, jnp.int32), settings)
            residual = float(check.residual[0])
            print(json.dumps({
                "case": case, "engine": engine, "route": S.route(settings, m, n),
                "seconds": round(time.perf_counter() - started, 1), "residual_eps": round(residual / EPS, 2),
                "flag_line_eps": S.residual_tolerance(m, n) / EPS, "gap_estimate": float(check.gap_estimate[0]),
                "bound": float(check.bound[0]), "flagged": bool(check.flagged[0]), "load": os.getloadavg()[0],
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
