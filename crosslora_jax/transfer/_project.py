"""One chunk's projection and gate: every adapter's modules of the chunk mapped through the
ops (jit + vmap, sharded over layers), scored, gated by `min_similarity`, and reported."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from crosslora_jax import _mesh
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.peft_adapter import Factors, LoraAdapter, LoraModule
from crosslora_jax.ops import Subspace, transfer_stack, truncate_stack
from crosslora_jax.transfer._options import TransferOptions
from crosslora_jax.transfer.report import ModuleFigures, ModuleReport, SidePair, SvdQuality


@dataclasses.dataclass
class Outcome:
    """What the chunks of one adapter add up to while the run works through them."""

    adapter: LoraAdapter
    factors: dict[LoraModule, Factors] = dataclasses.field(default_factory=dict)
    written: list[LoraModule] = dataclasses.field(default_factory=list)
    module_reports: list[ModuleReport] = dataclasses.field(default_factory=list)
    project_seconds: float = 0.0


@functools.cache
def _sharded_transfer(method: str):  # noqa: ANN202
    return _mesh.sharded_jit(functools.partial(transfer_stack, method))


@functools.cache
def _sharded_truncate(m_t: int, n_t: int):  # noqa: ANN202
    return _mesh.sharded_jit(functools.partial(truncate_stack, m_t=m_t, n_t=n_t))


def _project(
    method: str, a: np.ndarray, b: np.ndarray, src: Subspace, tgt: Subspace, s_idx: np.ndarray, t_idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """`transfer_stack` on host stacks, tall roles (m_s > n_s) posed transposed: every method maps
    ΔWᵀ = Aᵀ Bᵀ through (V, U) as it maps ΔW through (U, V), so gate/up then share down's
    compiled program (one fewer per pair)."""
    n = a.shape[0]
    flip = b.shape[1] > a.shape[2]
    if flip:
        a, b = np.swapaxes(b, 1, 2), np.swapaxes(a, 1, 2)
        src, tgt = src._replace(u=src.v, v=src.u), tgt._replace(u=tgt.v, v=tgt.u)
    a_t, b_t, stats = _sharded_transfer(method)(
        _mesh.shard_layers(np.ascontiguousarray(a)),
        _mesh.shard_layers(np.ascontiguousarray(b)),
        *(_mesh.shard_layers(x[s_idx]) for x in (src.u, src.v)),
        *(_mesh.shard_layers(x[t_idx]) for x in (tgt.u, tgt.v)),
    )
    diag = {k: _mesh.to_host(v, n) for k, v in stats._asdict().items()}
    a_t, b_t = _mesh.to_host(a_t, n), _mesh.to_host(b_t, n)
    if not flip:
        return a_t, b_t, diag
    swap = {"phi_u": "phi_v", "phi_v": "phi_u", "chance_u": "chance_v", "chance_v": "chance_u"}
    a_t, b_t = (np.ascontiguousarray(np.swapaxes(x, 1, 2)) for x in (b_t, a_t))
    return a_t, b_t, {swap.get(k, k): v for k, v in diag.items()}


def transfer_chunk(
    role: str,
    chunk: Sequence[tuple[int, int]],
    source: ModelConfig,
    target: ModelConfig,
    outcomes: Sequence[Outcome],
    options: TransferOptions,
    src: Subspace | None,
    tgt: Subspace | None,
    quality: tuple[Sequence[SvdQuality], Sequence[SvdQuality]],
) -> None:
    """Every adapter's modules of one chunk; `src` holds the chunk's distinct source layers in
    increasing order, `tgt` its target layers (both None when no subspace is needed), `quality`
    their SVDs' checks in the same orders."""
    src_pos = {layer: n for n, layer in enumerate(sorted({i for _, i in chunk}))}
    for outcome in outcomes:
        by_rank: dict[int, list[tuple[int, int, int, LoraModule]]] = defaultdict(list)
        for t_pos, (j, i) in enumerate(chunk):
            module = outcome.adapter.modules.get((role, i))
            if module is not None:
                by_rank[module.rank].append((t_pos, j, i, module))
        for group in by_rank.values():
            a, b = outcome.adapter.read_factors([g[3] for g in group])
            n = len(group)
            started = time.perf_counter()
            if src is None or tgt is None:
                a_t, b_t, *norms = _sharded_truncate(*target.shapes[role])(_mesh.shard_layers(a), _mesh.shard_layers(b))
                diag = dict(zip(("source_norm", "target_norm"), (_mesh.to_host(x, n) for x in norms), strict=True))
                a_t, b_t = _mesh.to_host(a_t, n), _mesh.to_host(b_t, n)
            else:
                s_idx = np.asarray([src_pos[i] for _, _, i, _ in group])
                t_idx = np.asarray([t for t, _, _, _ in group])
                a_t, b_t, diag = _project(options.method, a, b, src, tgt, s_idx, t_idx)
            outcome.project_seconds += time.perf_counter() - started
            for row, (t, j, i, module) in enumerate(group):
                subspace = None
                if src is not None and tgt is not None:
                    subspace = _SubspaceFacts(
                        energy=(float(src.energy[src_pos[i]]), float(tgt.energy[t])),
                        svd_rank=SidePair(int(src.u.shape[2]), int(tgt.u.shape[2])),
                        quality=(quality[0][src_pos[i]], quality[1][t]),
                    )
                entry = _module_entry(
                    role, j, module, source, target, options, {k: float(v[row]) for k, v in diag.items()}, subspace
                )
                if entry.status == "transferred":
                    written = LoraModule(entry.module, role, j, module.rank, module.alpha)
                    outcome.factors[written] = (a_t[row], b_t[row])
                    outcome.written.append(written)
                outcome.module_reports.append(entry)


@dataclasses.dataclass(frozen=True)
class _SubspaceFacts:
    energy: tuple[float, float]  # share of ‖W‖_F² kept by rank r: source, target
    svd_rank: SidePair  # effective rank used
    quality: tuple[SvdQuality, SvdQuality]  # source, target SVD checks


def _module_entry(
    role: str,
    j: int,
    module: LoraModule,
    source: ModelConfig,
    target: ModelConfig,
    options: TransferOptions,
    stats: dict[str, float],
    subspace: _SubspaceFacts | None,
) -> ModuleReport:
    """The report line of one computed target module, with the similarity gate's verdict.

    Without subspaces (`truncate`, gate off) the subspace figures are None: nothing measured them.
    """
    source_norm = stats["source_norm"]
    scored = subspace is not None
    similarity = min(stats["phi_u"], stats["phi_v"]) if scored else None
    gated = similarity is not None and similarity < options.min_similarity
    figures = ModuleFigures(
        source_module=module.path,
        method=options.method,
        rank=module.rank,
        alpha=module.alpha,
        source_shape=source.shapes[role],
        target_shape=target.shapes[role],
        svd_rank=subspace.svd_rank if scored else None,
        energy_source=subspace.energy[0] if scored else None,
        energy_target=subspace.energy[1] if scored else None,
        phi_u=stats.get("phi_u"),
        phi_v=stats.get("phi_v"),
        chance_u=stats.get("chance_u"),
        chance_v=stats.get("chance_v"),
        norm_ratio=stats["target_norm"] / source_norm if source_norm > 0 else None,
        in_subspace=stats["in_subspace_norm"] / source_norm if scored and source_norm > 0 else None,
        svd_source=subspace.quality[0] if scored else None,
        svd_target=subspace.quality[1] if scored else None,
    )
    return ModuleReport(
        module=target.arch.module_path(role, j),
        role=role,
        target_layer=j,
        source_layer=module.layer,
        skipped_by="gate" if gated else None,
        reason=f"similarity {similarity:.3f} < --min_similarity {options.min_similarity}" if gated else None,
        figures=figures,
    )
