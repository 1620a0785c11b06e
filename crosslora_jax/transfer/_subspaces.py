"""Each chunk's base-model subspaces: the previous chunk's where it holds them, else the cache
folder's, else computed (`_weight_subspaces`) and then cached; and what that cost."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crosslora_jax._progress import Progress
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops import Subspace, SvdSettings
from crosslora_jax.transfer._subspace_cache import SubspaceCache
from crosslora_jax.transfer._weight_subspaces import compute_subspaces
from crosslora_jax.transfer.report import SvdQuality


@dataclasses.dataclass
class SubspaceStats:
    """Where a run's subspaces came from and what they cost; shared by all its adapters."""

    computed: int = 0  # layers whose SVD ran
    cached: int = 0  # layers restored from the cache folder
    fallbacks: int = 0  # computed gram layers the check flagged and the exact SVD redid
    svd_seconds: float = 0.0
    read_seconds: float = 0.0
    cache_seconds: float = 0.0


_Layer = tuple[Subspace, SvdQuality]  # one layer's host factors and its SVD's check and route


class ChunkSubspaces:
    """The subspaces of a run's chunks, in plan order. It keeps the previous chunk's per model
    folder, this role only: the linear layer map is monotone, so a source layer is shared only by
    neighbouring chunks of one role, and host memory stays at one chunk per model."""

    def __init__(self, cache: SubspaceCache | None, settings: SvdSettings) -> None:
        self.stats = SubspaceStats()
        self._cache, self._settings = cache, settings
        self._memo: dict[Path, dict[int, _Layer]] = {}
        self._role: str | None = None

    def get(
        self, model: ModelConfig, ckpt: Checkpoint, role: str, layers: Sequence[int]
    ) -> tuple[Subspace, list[SvdQuality]]:
        if role != self._role:
            self._memo, self._role = {}, role
        return _chunk_subspaces(model, ckpt, role, layers, self._memo, self._cache, self._settings, self.stats)


def _chunk_subspaces(
    model: ModelConfig,
    ckpt: Checkpoint,
    role: str,
    layers: Sequence[int],
    memo: dict[Path, dict[int, _Layer]],
    cache: SubspaceCache | None,
    settings: SvdSettings,
    stats: SubspaceStats,
) -> tuple[Subspace, list[SvdQuality]]:
    """Host arrays [len(layers), ...] of `role` at `layers` (repeats allowed) and each one's SVD
    quality: each layer from the previous chunk (`memo`, replaced by this call's layers), else the
    cache, else computed (and then cached)."""
    previous = memo.pop(model.folder, {})
    unique = sorted(set(layers))
    found = {layer: previous[layer] for layer in unique if layer in previous}
    todo = [layer for layer in unique if layer not in found]
    if cache is not None and todo:  # the same on every process (the plan and memo are)
        started = time.perf_counter()
        hits = cache.load(ckpt, role, todo, model.shapes[role])
        found.update(hits)
        stats.cached += len(hits)
        stats.cache_seconds += time.perf_counter() - started
    missing = [layer for layer in unique if layer not in found]
    if missing:
        started = time.perf_counter()
        computed = compute_subspaces(model, ckpt, role, missing, settings)
        stats.computed += len(missing)
        stats.fallbacks += computed.fallbacks
        stats.read_seconds += computed.read_seconds
        stats.svd_seconds += time.perf_counter() - started - computed.read_seconds
        started = time.perf_counter()
        for n, layer in enumerate(missing):
            found[layer] = (Subspace(*(x[n] for x in computed.subspace)), computed.quality[n])
            if cache is not None:
                cache.save(ckpt, role, layer, *found[layer])
        stats.cache_seconds += time.perf_counter() - started
    memo[model.folder] = found
    stacked = Subspace(*(np.stack(xs) for xs in zip(*(found[layer][0] for layer in layers), strict=True)))
    return stacked, [found[layer][1] for layer in layers]


def weight_subspaces(
    model: ModelConfig,
    role: str,
    layers: Sequence[int],
    settings: SvdSettings,
    *,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> Subspace:
    """Host arrays [len(layers), ...] of one role's truncated SVD factors, read from `cache_dir`
    where present, else computed (and then kept there), as `transfer` gets them."""
    cache = None if cache_dir is None else SubspaceCache(cache_dir, settings, progress)
    ckpt = Checkpoint(model.folder)
    return _chunk_subspaces(model, ckpt, role, layers, {}, cache, settings, SubspaceStats())[0]
