"""The transfer's computation, no writing: the plan's chunks in order, each chunk's subspaces
once for all adapters, then its projection; every adapter's result with its report lines.

files ─io─▶ host stacks [L, m, n] per role and chunk ─shard─▶ ops (jit + vmap) ─▶ host factors.
Peak host memory is one chunk of one role of each model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from absl import logging

from crosslora_jax import _interrupt
from crosslora_jax._errors import TransferError
from crosslora_jax._progress import Progress
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.peft_adapter import Factors, LoraAdapter, LoraModule
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops import Subspace
from crosslora_jax.transfer._options import TransferOptions
from crosslora_jax.transfer._plan import plan_transfer, role_order
from crosslora_jax.transfer._project import Outcome, transfer_chunk
from crosslora_jax.transfer._subspace_cache import SubspaceCache
from crosslora_jax.transfer._subspaces import ChunkSubspaces, SubspaceStats
from crosslora_jax.transfer.report import LayerMap, ModuleReport, SvdQuality


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """One adapter mapped onto the target, not yet written: target factors by target module (one
    per role; a fused module's roles are fused on writing), the modules they are (target paths and
    layers), and the report line of every target module."""

    adapter: LoraAdapter
    factors: Mapping[LoraModule, Factors]
    written: tuple[LoraModule, ...]
    module_reports: tuple[ModuleReport, ...]  # sorted by target layer, then role
    layer_map: LayerMap
    project_seconds: float
    subspace_stats: SubspaceStats  # the whole run's (complete once run_transfer returns)


def run_transfer(
    source: ModelConfig,
    target: ModelConfig,
    adapters: Sequence[LoraAdapter],
    options: TransferOptions | None = None,
    progress: Progress | None = None,
    *,
    cache_dir: Path | str | None = None,
) -> list[TransferResult]:
    """The computation without the writing: every adapter mapped onto `target`; base-model
    subspaces are read from and kept in `cache_dir` when given (as `transfer` does)."""
    options = TransferOptions() if options is None else options
    progress = progress or Progress()
    cache = None if cache_dir is None else SubspaceCache(cache_dir, options.svd, progress)
    return compute_transfer(source, target, adapters, options, cache, progress)


def compute_transfer(
    source: ModelConfig,
    target: ModelConfig,
    adapters: Sequence[LoraAdapter],
    options: TransferOptions,
    cache: SubspaceCache | None,
    progress: Progress,
) -> list[TransferResult]:
    """`run_transfer` with its cache already opened (`transfer` opens it before any output)."""
    source_ckpt, target_ckpt = Checkpoint(source.folder), Checkpoint(target.folder)
    plan = plan_transfer(source, target, source_ckpt, target_ckpt, adapters, options)
    outcomes = [Outcome(a, module_reports=list(skipped)) for a, skipped in zip(adapters, plan.skipped, strict=True)]
    subspaces = ChunkSubspaces(cache, options.svd)
    progress.start(sum(c.cost for c in plan.chunks), len(plan.chunks))
    try:
        for chunk in plan.chunks:
            _interrupt.check()
            progress.working(chunk.label)
            started, before = time.perf_counter(), (subspaces.stats.computed, subspaces.stats.cached)
            src: Subspace | None = None
            tgt: Subspace | None = None
            src_quality: list[SvdQuality] = []
            tgt_quality: list[SvdQuality] = []
            if options.needs_subspaces:
                src_layers, tgt_layers = sorted({i for _, i in chunk.pairs}), [j for j, _ in chunk.pairs]
                src, src_quality = subspaces.get(source, source_ckpt, chunk.role, src_layers)
                tgt, tgt_quality = subspaces.get(target, target_ckpt, chunk.role, tgt_layers)
            transfer_chunk(chunk.role, chunk.pairs, source, target, outcomes, options, src, tgt,
                           (src_quality, tgt_quality))  # fmt: skip
            where = _chunk_sources(subspaces.stats.computed - before[0], subspaces.stats.cached - before[1])
            progress.step(chunk.cost, f"{chunk.label}{where} done in {time.perf_counter() - started:.1f}s")
    finally:
        progress.close()
    results = []
    for outcome in outcomes:
        _warn_about_report(outcome.adapter.folder, outcome.module_reports, options)
        if not outcome.factors:
            raise TransferError(
                outcome.adapter.folder,
                "no module was transferred (all were gated out or had no source layer); "
                "lower --min_similarity or change --layer_map",
            )
        reports = sorted(outcome.module_reports, key=lambda r: (r.target_layer, role_order(r.role)))
        results.append(TransferResult(outcome.adapter, outcome.factors, tuple(outcome.written), tuple(reports),
                                      plan.layer_map, outcome.project_seconds, subspaces.stats))  # fmt: skip
    return results


def _chunk_sources(computed: int, cached: int) -> str:
    """Where a chunk's subspaces came from, for its progress line: ': 4 layer SVDs computed, 2
    layers' subspaces from the cache,' ('' when none was needed or all were the previous chunk's)."""
    parts = [f"{computed} layer SVDs computed"] if computed else []
    parts += [f"{cached} layers' subspaces from the cache"] if cached else []
    return f": {', '.join(parts)}," if parts else ""


def _warn_about_report(folder: Path, modules: Sequence[ModuleReport], options: TransferOptions) -> None:
    """One line per kind of trouble, not one per module."""
    gated = [m.label for m in modules if m.skipped_by == "gate"]
    if gated:
        logging.warning("%s: %d modules skipped by --min_similarity=%g (see the report), e.g. %s",
                        folder, len(gated), options.min_similarity, gated[0])  # fmt: skip
    energies = {
        m.label: (m.figures.energy_source, m.figures.energy_target)
        for m in modules
        if m.figures is not None and m.figures.energy_source is not None and m.figures.energy_target is not None
    }
    low = {module: e for module, e in energies.items() if min(e) < options.energy_warning}
    if low:
        worst = min(low, key=lambda module: min(low[module]))
        logging.warning("%s: in %d modules the rank-r SVD keeps under %.0f%% of the weight energy (lowest: %s, "
                        "%.0f%% source / %.0f%% target); consider a larger --svd_rank", folder, len(low),
                        100 * options.energy_warning, worst, 100 * low[worst][0], 100 * low[worst][1])  # fmt: skip
