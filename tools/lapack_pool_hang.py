"""Reproduce the XLA CPU deadlock that batched LAPACK calls hit, and show the ops' wrapper avoids it.

    python tools/lapack_pool_hang.py --mode=raw --cpus=2    # stalls, usually within a few hundred draws
    python tools/lapack_pool_hang.py --mode=ours --cpus=2   # the same draws through ops._linalg.qr_q

Each draw is a new jitted program that makes two independent vmapped QRs (of a 96×96 and a
256×96 stack of 2), as `tools/svd_timing.py` drew its test weights. jaxlib's CPU LAPACK kernels
split a batch over XLA's intra-op pool and block the pool thread that runs them until every
piece is done; with both pool threads running one of the two QRs, nothing is left to run the
pieces. `--cpus` pins the process to that many CPUs before JAX starts, which sizes the pool.
Exit status 1 and a line naming the draw on a stall (no progress for `--stall_s`), 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("raw", "ours"), default="raw")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--cpus", type=int, default=0, help="pin to this many CPUs first (0: leave as is)")
    parser.add_argument("--stall_s", type=float, default=30.0)
    args = parser.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])

    import jax
    import jax.numpy as jnp

    from crosslora_jax.ops._linalg import qr_q

    qr = qr_q if args.mode == "ours" else (lambda x: jnp.linalg.qr(x)[0])
    progress = {"draw": 0, "at": time.monotonic()}

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if time.monotonic() - progress["at"] > args.stall_s:
                print(f"{args.mode}: stalled in draw {progress['draw']} (no progress for {args.stall_s:.0f} s; "
                      f"{len(os.sched_getaffinity(0))} CPUs)", flush=True)  # fmt: skip
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()
    started = time.monotonic()
    for draw in range(args.draws):
        progress["draw"] = draw

        def one(key: jax.Array) -> jax.Array:
            ku, kv = jax.random.split(key)
            return qr(jax.random.normal(ku, (96, 96))) @ qr(jax.random.normal(kv, (256, 96))).T

        jax.block_until_ready(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(draw), 2)))
        progress["at"] = time.monotonic()
    print(f"{args.mode}: {args.draws} draws, no stall, {time.monotonic() - started:.1f} s "
          f"({len(os.sched_getaffinity(0))} CPUs)")  # fmt: skip
    sys.exit(0)


if __name__ == "__main__":
    main()
