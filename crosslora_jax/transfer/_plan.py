"""The plan of a transfer: the layer map resolved once, every file's headers checked against its
config, and per role the (target layer, source layer) pairs some adapter needs, in chunks of
`layers_per_chunk`; what no adapter has gets its report line here. Nothing is read but headers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from absl import logging

from crosslora_jax._errors import CheckpointError
from crosslora_jax.arch import ROLES
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.peft_adapter import LoraAdapter
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops import layer_map, resolve_layer_map
from crosslora_jax.transfer._options import TransferOptions
from crosslora_jax.transfer.report import LayerMap, ModuleReport


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One step of the run: layers of one role, all adapters at once."""

    role: str
    label: str  # for the progress line
    pairs: tuple[tuple[int, int], ...]  # (target layer, source layer)
    cost: float  # relative work, for the ETA


@dataclasses.dataclass(frozen=True)
class Plan:
    layer_map: LayerMap
    chunks: tuple[Chunk, ...]
    skipped: tuple[tuple[ModuleReport, ...], ...]  # per adapter: the target modules it gets nothing for


def role_order(role: str) -> int:
    return ROLES.index(role)


def plan_transfer(
    source: ModelConfig,
    target: ModelConfig,
    source_ckpt: Checkpoint,
    target_ckpt: Checkpoint,
    adapters: Sequence[LoraAdapter],
    options: TransferOptions,
) -> Plan:
    """The chunks every adapter's modules are computed in; fails (before any compute) when a
    checkpoint's tensor disagrees with its config."""
    kind = resolve_layer_map(options.layer_map, source.num_layers, target.num_layers)
    lmap = LayerMap(kind, tuple(layer_map(kind, source.num_layers, target.num_layers)))
    roles = sorted({role for a in adapters for role in a.roles()}, key=role_order)
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
    chunks: list[Chunk] = []
    skipped: list[list[ModuleReport]] = [[] for _ in adapters]
    for role in roles:
        _warn_about_ranks(role, target, adapters)
        jobs = []
        for j, i in enumerate(lmap.target_to_source):
            needed = i is not None and any((role, i) in a.modules for a in adapters)
            if needed:
                jobs.append((j, i))
            for adapter, lines in zip(adapters, skipped, strict=True):
                if i is None or (role, i) not in adapter.modules:
                    lines.append(_skipped(target, role, j, i, source.num_layers))
        parts = [jobs[c : c + options.layers_per_chunk] for c in range(0, len(jobs), options.layers_per_chunk)]
        chunks += [
            Chunk(role, f"role {role} chunk {number}/{len(parts)} (target layers {part[0][0]}-{part[-1][0]})",
                  tuple(part), _chunk_cost(role, part, source, target, options))
            for number, part in enumerate(parts, 1)
        ]  # fmt: skip
    return Plan(lmap, tuple(chunks), tuple(tuple(lines) for lines in skipped))


def _chunk_cost(
    role: str, chunk: Sequence[tuple[int, int]], source: ModelConfig, target: ModelConfig, options: TransferOptions
) -> float:
    """Relative work of one chunk for the ETA: SVD flops (m·n·min(m, n)) of both models' layers."""
    if not options.needs_subspaces:
        return float(len(chunk))
    return float(sum(m * n * min(m, n) for m, n in (source.shapes[role], target.shapes[role])) * len(chunk))


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


def _skipped(target: ModelConfig, role: str, j: int, i: int | None, source_layers: int) -> ModuleReport:
    why = (
        f"no source layer (index layer map; the source has {source_layers} layers)"
        if i is None
        else f"the adapter has no {role} module in source layer {i}"
    )
    return ModuleReport(
        target.arch.module_path(role, j), role, j, i, "layer_map" if i is None else "adapter", why, None
    )
