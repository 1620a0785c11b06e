"""XLA_FLAGS for the test session and the subprocesses tests start.

XLA's CPU runtime can wedge: every Eigen intra-op pool thread parked, the caller waiting in
block_until_ready forever. Seen here twice in a row in `tools/svd_timing.py` on 96×96 matrices
(gdb: main thread in jax::BlockUntilReadyWithCancel, pool threads in EventCount::CommitWait) and
not again in a dozen reruns; another project traced the same hang to the multi-threaded Eigen pool
(https://github.com/PyAutoLabs/PyAutoFit/issues/1528). Tests check results, not speed, so they
run with that pool single-threaded; subprocesses inherit it through the environment. The
library itself sets no XLA flags (README, "If a CPU run hangs").
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
