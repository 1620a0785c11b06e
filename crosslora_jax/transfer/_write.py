"""`transfer()`: files in, PEFT adapter folders and their reports out, each folder moved into
place only when complete; and the report of one adapter's result (`report_for`)."""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import jax

from crosslora_jax import _interrupt
from crosslora_jax._errors import OptionsError
from crosslora_jax._paths import absolute
from crosslora_jax._progress import Progress
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.output_folder import check_output_location, staged_output
from crosslora_jax.io.peft_adapter import read_adapter, write_target_adapter
from crosslora_jax.ops.svd import effective_rank
from crosslora_jax.transfer._options import TransferOptions
from crosslora_jax.transfer._plan import role_order
from crosslora_jax.transfer._run import TransferResult, compute_transfer
from crosslora_jax.transfer._subspace_cache import SubspaceCache
from crosslora_jax.transfer.report import SidePair, Timings, TransferReport
from crosslora_jax.transfer.report_text import write_report


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
        raise OptionsError("adapters", "at least one adapter folder is required")
    check_output_location(output, [source_model, target_model, *adapter_dirs], overwrite=overwrite)
    source_cfg, target_cfg = read_model_config(source_model), read_model_config(target_model)
    loaded = [read_adapter(a, source_cfg) for a in adapter_dirs]
    names = _output_names(adapter_dirs)
    cache = None if cache_dir is None else SubspaceCache(cache_dir, options.svd, progress)  # fails before compute
    run = functools.partial(compute_transfer, source_cfg, target_cfg, loaded, options, cache, progress or Progress())
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


def _effective_ranks(
    source: ModelConfig, target: ModelConfig, result: TransferResult, options: TransferOptions
) -> dict[str, SidePair | None]:
    """Per role, r_e = min(r, m, n) of each model; None where no SVD was needed (truncate)."""
    roles = sorted({m.role for m in result.module_reports if m.figures is not None}, key=role_order)
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
