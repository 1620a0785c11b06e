"""XLA's persistent compilation cache, kept beside the subspace cache when `--cache_dir` is set."""

from __future__ import annotations

from pathlib import Path

import jax

from crosslora_jax._paths import absolute


def enable_compilation_cache(cache_dir: Path | str) -> None:
    """Store compiled XLA programs under `cache_dir/xla`, so the next run on the same shapes (the
    next adapter for a model pair) loads them instead of compiling: on a warm subspace cache the
    compiles are most of what is left (docs/benchmark.md). Process-global, so the CLI calls it,
    not the library; a user's own `jax_compilation_cache_dir` is left alone."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(absolute(cache_dir) / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
