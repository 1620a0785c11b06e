"""XLA's persistent compilation cache: beside the subspace cache when `--cache_dir` is set, else
in the user's cache folder."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from crosslora_jax._paths import absolute


def enable_compilation_cache(cache_dir: Path | str | None = None) -> None:
    """Store compiled XLA programs under `cache_dir/xla` (default: ($XDG_CACHE_HOME or
    ~/.cache)/crosslora_jax/xla), so the next run on the same shapes (the next adapter for a model
    pair, a rerun of a small pair) loads them instead of compiling: on a warm subspace cache and
    on small models the compiles are most of what is left (docs/benchmark.md). Process-global, so
    the CLI calls it, not the library; a user's own `jax_compilation_cache_dir` is left alone."""
    if jax.config.jax_compilation_cache_dir:
        return
    if cache_dir is None:
        cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()) / "crosslora_jax"
    jax.config.update("jax_compilation_cache_dir", str(absolute(cache_dir) / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
