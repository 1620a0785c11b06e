"""Calibration: SvdCheck of exact/gram at real shapes and spectra."""
import time, sys, json
import numpy as np, jax, jax.numpy as jnp, ml_dtypes
from crosslora_jax.ops import svd as S
eps = float(np.finfo(np.float32).eps)

def flat(m, n, seed):
    g = np.random.default_rng(seed).standard_normal((m, n), dtype=np.float32)
    return g / np.sqrt(n) * (1 + 4 / (1 + np.arange(n, dtype=np.float32) / 32))

def shaped(m, n, seed, sigma):
    # G_m×d diag(σ) H_d×n with Gaussian G, H: spectrum close to σ in shape, cheap at any size
    rng = np.random.default_rng(seed); d = min(m, n)
    g = rng.standard_normal((m, d), dtype=np.float32) / np.sqrt(m)
    h = rng.standard_normal((d, n), dtype=np.float32) / np.sqrt(n)
    return (g * sigma.astype(np.float32)) @ h

def spectrum(kind, d):
    i = np.arange(d)
    if kind == "power": return (1 + i / (0.02 * d)) ** -0.6
    if kind == "power_slow": return (1 + i / (0.02 * d)) ** -0.3
    if kind == "steep": return np.logspace(0, -6, d)
    if kind == "rankdef": return np.where(i < 200, np.linspace(1, 0.5, d), 0.0)
    raise ValueError(kind)

def weight(kind, m, n, seed):
    w = flat(m, n, seed) if kind == "flat" else shaped(m, n, seed, spectrum(kind, min(m, n)))
    return w.astype(ml_dtypes.bfloat16).astype(np.float32)

if __name__ == "__main__":
    engines = sys.argv[1].split(",")
    for case in sys.argv[2:]:
        kind, shape = case.split(":"); m, n = map(int, shape.split("x"))
        w = weight(kind, m, n, 2)
        if m > n: w = np.ascontiguousarray(w.T)
        for eng in engines:
            st = S.SvdSettings(rank=320, engine=eng)
            t = time.time()
            sub, chk = S.truncated_svd_with_check(w[None], jnp.zeros(1, jnp.int32), st)
            jax.block_until_ready(chk); el = time.time() - t
            res = float(chk.residual[0])
            print(json.dumps(dict(case=case, engine=eng, route=S.route(st, *w.shape), seconds=round(el, 1),
                  residual=res, res_over_eps=res / eps, tol_over_eps=S.residual_tolerance(*w.shape) / eps,
                  gap=float(chk.gap_estimate[0]), bound=float(chk.bound[0]), flagged=bool(chk.flagged[0]),
                  load=open("/proc/loadavg").read().split()[0])), flush=True)
