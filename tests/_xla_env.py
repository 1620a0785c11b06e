"""XLA_FLAGS for the test session and the subprocesses tests start.

The session turns off XLA's multi-threaded Eigen on CPU. It was added after a tool child hung
twice with the pool threads idle, on the guess that the Eigen pool wedged; that guess was wrong
(the hang came back under this flag in CI). The cause was jaxlib's batched LAPACK kernels
blocking pool threads on each other, fixed in `crosslora_jax.ops._linalg.per_matrix` and tested
in tests/ops/test_linalg.py. The flag stays because the suite's timings and tolerances were
settled under it; it is not what prevents the hang, and the library sets no XLA flags.
"""

from __future__ import annotations

import os

SINGLE_THREADED_EIGEN = "--xla_cpu_multi_thread_eigen=false"


def xla_flags(*extra: str) -> str:
    """XLA_FLAGS for a test subprocess: the session's flags plus `extra`."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *extra]).strip()


def apply() -> None:
    """Set the session's flags; must run before JAX creates its CPU client."""
    if SINGLE_THREADED_EIGEN not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = xla_flags(SINGLE_THREADED_EIGEN)
