"""Plan and run a transfer: roles × layer chunks, subspaces once per chunk for all adapters.

files ─io─▶ host stacks [L, m, n] per role and chunk ─shard─▶ ops (jit+vmap) ─▶ host ─io─▶
PEFT adapter folders + report.json. Peak host memory is one chunk of one role of each model.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np
from absl import logging

from crosslora_jax import _interrupt, _mesh
from crosslora_jax._errors import CheckpointError, OptionsError, TransferError
from crosslora_jax._options import check_options, option
from crosslora_jax._paths import absolute
from crosslora_jax._progress import Progress
from crosslora_jax._subspace_cache import SubspaceCache
from crosslora_jax._weight_subspaces import compute_subspaces
from crosslora_jax.arch import ROLES
from crosslora_jax.io.dtypes import NUMPY_DTYPES, OUTPUT_CHOICES
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.output_folder import check_output_location, staged_output
from crosslora_jax.io.peft_adapter import Factors, LoraAdapter, LoraModule, read_adapter, write_target_adapter
from crosslora_jax.io.report import write_report
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops import (
    Subspace,
    SvdSettings,
    layer_map,
    resolve_layer_map,
    transfer_stack,
    truncate_stack,
)
from crosslora_jax.ops.layer_map import LayerMapKind
from crosslora_jax.ops.svd import effective_rank
from crosslora_jax.ops.transfer import Method
from crosslora_jax.transfer_report import (
    LayerMap,
    ModuleFigures,
    ModuleReport,
    SidePair,
    SvdQuality,
    Timings,
    TransferReport,
)


@dataclasses.dataclass(frozen=True)
class TransferOptions:
    """How to transfer; each field (and each of `svd`'s) is one flag of the CLI."""

    method: Method = option(
        "cross_lora",
        "Transfer method: cross_lora (align the source's subspaces to the target's, then project), "
        "lora_x (project onto the target's subspaces), truncate (zero-pad/crop: the reference code's "
        "effective behaviour). Equations in docs/method.md.",
    )
    svd: SvdSettings = dataclasses.field(default_factory=SvdSettings)
    layer_map: LayerMapKind = option(
        "auto",
        "Target→source layer map: index (layer j from layer j), linear (spread evenly over the source's "
        "depth), auto (index when the depths are equal, else linear).",
    )
    min_similarity: float = option(0.0, "Transfer a module only if min(φ_U, φ_V) reaches this.", low=0.0, high=1.0)
    # The API may write float64; the flag offers what PEFT adapters are trained in.
    output_dtype: str = option("auto", "dtype of the written factors.", choices=("auto", *NUMPY_DTYPES),
                               flag_choices=("auto", *OUTPUT_CHOICES))  # fmt: skip
    layers_per_chunk: int = option(8, "Layers of one role processed (and held) at once.", low=1)
    energy_warning: float = option(0.25, "Warn when rank r captures less weight energy than this.")

    def __post_init__(self) -> None:
        check_options(self)

    @property
    def needs_subspaces(self) -> bool:
        """`truncate` uses no subspace unless the similarity gate must score modules."""
        return self.method != "truncate" or self.min_similarity > 0


@dataclasses.dataclass
class SubspaceStats:
    """Where a run's subspaces came from and what they cost; shared by all its adapters."""

    computed: int = 0  # layers whose SVD ran
    cached: int = 0  # layers restored from the cache folder
    fallbacks: int = 0  # computed gram layers the check flagged and the exact SVD redid
    svd_seconds: float = 0.0
    read_seconds: float = 0.0
    cache_seconds: float = 0.0


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


@dataclasses.dataclass
class _Outcome:
    """What the chunks of one adapter add up to while `run_transfer` works through them."""

    adapter: LoraAdapter
    factors: dict[LoraModule, Factors] = dataclasses.field(default_factory=dict)
    written: list[LoraModule] = dataclasses.field(default_factory=list)
    module_reports: list[ModuleReport] = dataclasses.field(default_factory=list)
    project_seconds: float = 0.0


def transfer(
    source_model: Path | str,
    target_model: Path | str,
    adapters: Sequence[Path | str],
    output: Path | str,
    options: TransferOptions | None = None,
    *,
    overwrite: bool = False,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> list[TransferReport]:
    """Transfer each adapter and write it under `output`; returns one report per adapter (what
    each folder's `crosslora_report.json` holds: `report.to_json()`).

    With one adapter `output` is the adapter folder; with several it is a parent folder with
    one adapter folder each, named after the input folders. An adapter path that is a folder of
    adapter folders stands for all of them. With `cache_dir`, base-model subspaces are kept
    there (orbax) and reused by later runs; a cache folder that cannot be created or written is
    an `OutputError` before any compute. Relative paths are taken from the working directory.
    `progress` receives one step per role chunk (by default each step is logged at INFO).
    `options=None` means `TransferOptions()`, the command's defaults.
    """
    options = TransferOptions() if options is None else options
    source_model, target_model, output = absolute(source_model), absolute(target_model), absolute(output)
    adapter_dirs = expand_adapter_dirs([absolute(a) for a in adapters])
    if not adapter_dirs:
        raise OptionsError("--adapter", "at least one adapter folder is required")
    check_output_location(output, [source_model, target_model, *adapter_dirs], overwrite=overwrite)
    source_cfg, target_cfg = read_model_config(source_model), read_model_config(target_model)
    loaded = [read_adapter(a, source_cfg) for a in adapter_dirs]
    names = _output_names(adapter_dirs)
    cache = None if cache_dir is None else SubspaceCache(cache_dir, options.svd, progress)  # fails before compute
    run = functools.partial(_run_transfer, source_cfg, target_cfg, loaded, options, cache, progress or Progress())
    if jax.process_index() != 0:  # one process writes; the others compute their shards
        results, compute_seconds = _timed(run)
        return [report_for(source_cfg, target_cfg, r, options, compute_seconds) for r in results]
    # The staging folder is made before computing, so an unwritable --output fails in seconds.
    with staged_output(output) as staging:
        results, compute_seconds = _timed(run)
        _interrupt.check()
        started = time.perf_counter()
        reports = []
        for name, result in zip(names, results, strict=True):
            folder = staging if len(results) == 1 else staging / name
            folder.mkdir(exist_ok=True)
            dtype = result.adapter.dtype if options.output_dtype == "auto" else options.output_dtype
            write_target_adapter(folder, result.adapter.config, target_cfg, result.factors, dtype)
            final = output if len(results) == 1 else output / name
            seconds = time.perf_counter() - started
            report = report_for(source_cfg, target_cfg, result, options, compute_seconds, final, dtype, seconds)
            write_report(folder, report)
            reports.append(report)
    return reports


def _timed(fn):  # noqa: ANN001, ANN202
    started = time.perf_counter()
    return fn(), time.perf_counter() - started


def expand_adapter_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each path as given, or, for a folder holding adapter folders, those folders (sorted)."""
    out = []
    for path in paths:
        children = sorted(c for c in path.iterdir() if (c / "adapter_config.json").is_file()) if path.is_dir() else []
        out.extend(children if children and not (path / "adapter_config.json").exists() else [path])
    return out


def _output_names(adapter_dirs: Sequence[Path]) -> list[str]:
    names, seen = [], defaultdict(int)
    for a in adapter_dirs:
        base = a.resolve().name or "adapter"
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return names


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
    return _run_transfer(source, target, adapters, options, cache, progress)


def _run_transfer(
    source: ModelConfig,
    target: ModelConfig,
    adapters: Sequence[LoraAdapter],
    options: TransferOptions,
    cache: SubspaceCache | None,
    progress: Progress,
) -> list[TransferResult]:
    source_ckpt, target_ckpt = Checkpoint(source.folder), Checkpoint(target.folder)
    kind = resolve_layer_map(options.layer_map, source.num_layers, target.num_layers)
    lmap = LayerMap(kind, tuple(layer_map(kind, source.num_layers, target.num_layers)))
    outcomes = [_Outcome(a) for a in adapters]
    roles = sorted({role for a in adapters for role in a.roles()}, key=_role_order)
    unmapped = [j for j, i in enumerate(lmap.target_to_source) if i is None]
    if unmapped:
        logging.warning("target layers %s have no source layer under the index layer map; they get no adapter "
                        "(--layer_map=linear maps every target layer)", unmapped)  # fmt: skip
    for role in ROLES:  # headers only: fail before any compute if a file disagrees with its config
        _check_role_weights(source, source_ckpt, role)
        _check_role_weights(target, target_ckpt, role)
    capped = [role for role in roles if options.svd.rank > min(*source.shapes[role], *target.shapes[role])]
    if capped and options.needs_subspaces:  # usual on small models: one line; the report has svd.effective_rank
        logging.info("--svd_rank=%d exceeds a weight dimension in roles %s; those use min(r, m, n) per model",
                     options.svd.rank, ", ".join(capped))  # fmt: skip
    plan = []  # (role, label, chunk of (target layer, source layer) pairs some adapter needs)
    for role in roles:
        _warn_about_ranks(role, target, adapters)
        jobs = []
        for j, i in enumerate(lmap.target_to_source):
            needed = i is not None and any((role, i) in a.modules for a in adapters)
            if needed:
                jobs.append((j, i))
            for outcome in outcomes:
                if i is None or (role, i) not in outcome.adapter.modules:
                    outcome.module_reports.append(_skipped(target, role, j, i, source.num_layers))
        chunks = [jobs[c : c + options.layers_per_chunk] for c in range(0, len(jobs), options.layers_per_chunk)]
        plan += [(role, f"role {role} chunk {number}/{len(chunks)} (target layers {chunk[0][0]}-{chunk[-1][0]})", chunk)
                 for number, chunk in enumerate(chunks, 1)]  # fmt: skip
    costs = [_chunk_cost(role, chunk, source, target, options) for role, _, chunk in plan]
    stats = SubspaceStats()
    # The previous chunk's subspaces per model folder, this role only: the linear layer map is
    # monotone, so a source layer is shared only by neighbouring chunks of one role, and host
    # memory stays at one chunk per model.
    memo: dict[Path, dict[int, _Layer]] = {}
    memo_role = None
    progress.start(sum(costs), len(plan))
    try:
        for (role, label, chunk), cost in zip(plan, costs, strict=True):
            _interrupt.check()
            progress.working(label)
            started, before = time.perf_counter(), (stats.computed, stats.cached)
            if role != memo_role:
                memo, memo_role = {}, role
            src = tgt = None
            src_quality: list[SvdQuality] = []
            tgt_quality: list[SvdQuality] = []
            if options.needs_subspaces:
                src_layers, tgt_layers = sorted({i for _, i in chunk}), [j for j, _ in chunk]
                src, src_quality = _chunk_subspaces(source, source_ckpt, role, src_layers, memo, cache, options.svd,
                                                    stats)  # fmt: skip
                tgt, tgt_quality = _chunk_subspaces(target, target_ckpt, role, tgt_layers, memo, cache, options.svd,
                                                    stats)  # fmt: skip
            _transfer_chunk(role, chunk, source, target, outcomes, options, src, tgt, (src_quality, tgt_quality))
            where = _chunk_sources(stats.computed - before[0], stats.cached - before[1])
            progress.step(cost, f"{label}{where} done in {time.perf_counter() - started:.1f}s")
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
        reports = sorted(outcome.module_reports, key=lambda r: (r.target_layer, _role_order(r.role)))
        results.append(TransferResult(outcome.adapter, outcome.factors, tuple(outcome.written), tuple(reports), lmap,
                                      outcome.project_seconds, stats))  # fmt: skip
    return results


def _chunk_sources(computed: int, cached: int) -> str:
    """Where a chunk's subspaces came from, for its progress line: ': 4 layer SVDs computed, 2
    layers' subspaces from the cache,' ('' when none was needed or all were the previous chunk's)."""
    parts = [f"{computed} layer SVDs computed"] if computed else []
    parts += [f"{cached} layers' subspaces from the cache"] if cached else []
    return f": {', '.join(parts)}," if parts else ""


def _chunk_cost(
    role: str, chunk: Sequence[tuple[int, int]], source: ModelConfig, target: ModelConfig, options: TransferOptions
) -> float:
    """Relative work of one chunk for the ETA: SVD flops (m·n·min(m, n)) of both models' layers."""
    if not options.needs_subspaces:
        return float(len(chunk))
    return float(sum(m * n * min(m, n) for m, n in (source.shapes[role], target.shapes[role])) * len(chunk))


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


def _role_order(role: str) -> int:
    return ROLES.index(role)


def _warn_about_ranks(role: str, target: ModelConfig, adapters: Sequence[LoraAdapter]) -> None:
    m_t, n_t = target.shapes[role]
    ranks = {m.rank for a in adapters for m in a.modules.values() if m.role == role}
    if ranks and max(ranks) > min(m_t, n_t):
        logging.warning("role %s: LoRA rank %d exceeds the target's %dx%d weight; the update is rank-limited",
                        role, max(ranks), m_t, n_t)  # fmt: skip


def _check_role_weights(model: ModelConfig, ckpt: Checkpoint, role: str) -> None:
    want = model.stored_shape(role)  # a fused role's module holds its roles' rows
    for layer in range(model.num_layers):
        name = model.arch.weight_name(role, layer)
        shape = ckpt.shape(name)
        if shape != want:
            raise CheckpointError(
                ckpt.file_of(name),
                f"tensor {name!r} has shape {list(shape)} but config.json implies {list(want)}",
            )


_Layer = tuple[Subspace, SvdQuality]  # one layer's host factors and its SVD's check and route


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


@functools.cache
def _sharded_transfer(method: str):  # noqa: ANN202
    return _mesh.sharded_jit(functools.partial(transfer_stack, method))


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


def _transfer_chunk(
    role: str,
    chunk: Sequence[tuple[int, int]],
    source: ModelConfig,
    target: ModelConfig,
    outcomes: Sequence[_Outcome],
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


@functools.cache
def _sharded_truncate(m_t: int, n_t: int):  # noqa: ANN202
    return _mesh.sharded_jit(functools.partial(truncate_stack, m_t=m_t, n_t=n_t))


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


def _skipped(target: ModelConfig, role: str, j: int, i: int | None, source_layers: int) -> ModuleReport:
    why = (
        f"no source layer (index layer map; the source has {source_layers} layers)"
        if i is None
        else f"the adapter has no {role} module in source layer {i}"
    )
    return ModuleReport(
        target.arch.module_path(role, j), role, j, i, "layer_map" if i is None else "adapter", why, None
    )


def _effective_ranks(
    source: ModelConfig, target: ModelConfig, result: TransferResult, options: TransferOptions
) -> dict[str, SidePair | None]:
    """Per role, r_e = min(r, m, n) of each model; None where no SVD was needed (truncate)."""
    roles = sorted({m.role for m in result.module_reports if m.figures is not None}, key=_role_order)
    if not options.needs_subspaces:
        return dict.fromkeys(roles)
    rank = options.svd.rank
    return {
        role: SidePair(effective_rank(rank, *source.shapes[role]), effective_rank(rank, *target.shapes[role]))
        for role in roles
    }


def report_for(
    source: ModelConfig,
    target: ModelConfig,
    result: TransferResult,
    options: TransferOptions,
    compute_seconds: float,
    output: Path | None = None,
    dtype: str = "-",
    write_seconds: float | None = None,
) -> TransferReport:
    """The report of one adapter; without `output` (processes that write nothing) dtype is "-"."""
    stats = result.subspace_stats
    return TransferReport(
        adapter=result.adapter.folder,
        output=output,
        source_model=source.folder,
        target_model=target.folder,
        method=options.method,
        svd=options.svd,
        effective_rank=_effective_ranks(source, target, result, options),
        layer_map=result.layer_map,
        min_similarity=options.min_similarity,
        output_dtype=dtype,
        devices=tuple(str(d) for d in jax.devices()),
        computed_layers=stats.computed,
        cached_layers=stats.cached,
        fallback_layers=stats.fallbacks,
        timings=Timings(
            compute_seconds=compute_seconds,
            svd_seconds=stats.svd_seconds,
            read_seconds=stats.read_seconds,
            cache_seconds=stats.cache_seconds,
            project_seconds=result.project_seconds,
            write_seconds=write_seconds,
        ),
        modules=result.module_reports,
    )
