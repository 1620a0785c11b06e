"""Stacked pytrees for JAX code: base weights and LoRA factors with layers on a leading axis.

    stacks = load_weight_stacks("Qwen2.5-1.5B/", roles=["q"])          # {"q": [L, m, n]}
    lora = load_lora_stacks("my_lora/", "Qwen2.5-1.5B/")                # {"q": LoraStack(...)}
    save_lora_stacks("out/", "Llama-3.2-3B/", {"q": transferred}, like="my_lora/")

With `truncated_svd` and `transfer_stack` (both jittable, usable under the caller's own
jit and mesh) these are the pieces `crosslora_jax.transfer` is built from.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import jax
import numpy as np

from crosslora_jax._errors import AdapterError
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.output_folder import staged_output
from crosslora_jax.io.peft_adapter import (
    Factors,
    LoraAdapter,
    LoraModule,
    lora_scale,
    read_adapter,
    read_adapter_config,
    write_target_adapter,
)
from crosslora_jax.io.safetensors_checkpoint import Checkpoint


@functools.partial(jax.tree_util.register_dataclass, data_fields=("a", "b", "scale"), meta_fields=("layers",))
@dataclasses.dataclass(frozen=True)
class LoraStack:
    """One role's LoRA over several layers, the one type of LoRA factors in stacks: what
    `load_lora_stacks` returns and `save_lora_stacks` writes, the evaluator's LoRA side path and
    the distillation student's. Row i is layer `layers[i]` (None: row i is layer i),
    ΔW[layer] = scale[i] · b[i] @ a[i]; rows padded to a larger rank hold zeros, rows of layers
    without a module have scale 0. A pytree: `a`, `b`, `scale` are its leaves, `layers` is static.
    (Until issue 24 it held `alpha` [L] instead of `scale`; `scale` = alpha/k, or alpha/√k with
    rslora.)"""

    a: Annotated[Any, "L k n"]
    b: Annotated[Any, "L m k"]
    scale: Annotated[Any, " L"]
    layers: tuple[int, ...] | None = None

    def _replace(self, **changes: Any) -> LoraStack:
        """A copy with `changes` (the NamedTuple method this type had)."""
        return dataclasses.replace(self, **changes)

    def for_target_layers(self, source_of: Sequence[int | None]) -> LoraStack:
        """This LoRA re-indexed onto a model of another depth: `source_of[j]` is the source layer
        feeding target layer j (what `layer_map` returns). The result holds, in order, every
        target layer whose source layer this stack has, with that layer's factors and scale;
        its `layers` are target layers. The source layer of its row i is `source_of[layers[i]]`."""
        layers = range(len(self.a)) if self.layers is None else self.layers
        row_of = {layer: row for row, layer in enumerate(layers)}
        targets = [j for j, i in enumerate(source_of) if i in row_of]
        rows = np.asarray([row_of[source_of[j]] for j in targets], np.int64)
        return LoraStack(self.a[rows], self.b[rows], np.asarray(self.scale)[rows], tuple(targets))


def stack_factors(
    modules: Mapping[int, LoraModule],
    factors: Callable[[LoraModule], Factors],
    scale: Callable[[LoraModule], float],
    sources: Sequence[int | None],
    layers: Sequence[int] | None = None,
    rank: int | None = None,
) -> LoraStack:
    """One role's modules (by layer) laid out as a float32 stack: row i holds the module at layer
    `sources[i]` (zeros and scale 0 where that is None or has no module), zero-padded to `rank`
    (default: the largest); `layers` (default `sources`) names the rows. The one layout of LoRA
    factors into stacks: adapters read from files, the init transfer's result, the teacher's."""
    rows = [None if i is None else modules.get(i) for i in sources]
    present = {m: factors(m) for m in rows if m is not None}
    if not present:
        raise ValueError("no module at any of the layers to stack")
    k = rank or max(m.rank for m in present)
    fa, fb = next(iter(present.values()))
    a = np.zeros((len(rows), k, fa.shape[1]), np.float32)
    b = np.zeros((len(rows), fb.shape[0], k), np.float32)
    scales = np.zeros((len(rows),), np.float32)
    for row, module in enumerate(rows):
        if module is not None:
            fa, fb = present[module]
            a[row, : module.rank], b[row, :, : module.rank] = fa, fb
            scales[row] = scale(module)
    return LoraStack(a, b, scales, tuple(sources if layers is None else layers))  # type: ignore[arg-type]


def adapter_stack(
    adapter: LoraAdapter,
    role: str,
    sources: Sequence[int | None],
    layers: Sequence[int] | None = None,
    rank: int | None = None,
) -> LoraStack:
    """`stack_factors` of an adapter's `role` modules, read from its file."""
    modules = {m.layer: m for m in adapter.modules.values() if m.role == role}

    def read(module: LoraModule) -> Factors:
        a, b = adapter.read_factors([module])
        return a[0], b[0]

    return stack_factors(modules, read, adapter.scale, sources, layers, rank)


def load_weight_stacks(
    model_dir: Path | str, roles: Sequence[str] | None = None, layers: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """{role: float32 [L, m, n]} for the given roles (default all) and layers (default all)."""
    config = read_model_config(model_dir)
    ckpt = Checkpoint(config.folder)
    layers = range(config.num_layers) if layers is None else layers
    return {
        role: ckpt.read_stack([config.arch.weight_name(role, layer) for layer in layers], config.row_ranges.get(role))
        for role in (roles or list(config.arch.role_modules))
    }


def load_lora_stacks(adapter_dir: Path | str, source_model_dir: Path | str) -> dict[str, LoraStack]:
    """{role: LoraStack} of a PEFT adapter, rows at the layers it adapts; every module of a role
    must share one rank."""
    adapter = read_adapter(adapter_dir, read_model_config(source_model_dir))
    out = {}
    for role in adapter.roles():
        modules = sorted((m for m in adapter.modules.values() if m.role == role), key=lambda m: m.layer)
        if len({m.rank for m in modules}) > 1:
            raise AdapterError(adapter.folder, f"role {role} mixes LoRA ranks; use read_adapter(...).read_factors")
        out[role] = adapter_stack(adapter, role, [m.layer for m in modules])
    return out


def save_lora_stacks(
    folder: Path | str,
    target_model_dir: Path | str,
    stacks: Mapping[str, LoraStack],
    *,
    like: Path | str | Mapping[str, Any],
    dtype: str = "float32",
) -> None:
    """Write `stacks` as a PEFT adapter for the target; `like` gives the other config fields
    (an adapter folder, or an adapter_config dict) and use_rslora, by which each row's scale
    becomes its lora_alpha (α = scale·k, or scale·√k)."""
    target = read_model_config(target_model_dir)
    base_config = dict(like) if isinstance(like, Mapping) else read_adapter_config(like)
    for role, stack in stacks.items():
        _check_stack(Path(folder), target, role, stack)
    rslora = bool(base_config.get("use_rslora", False))
    factors = {}
    for role, stack in stacks.items():
        k = int(stack.a.shape[1])
        for n, layer in enumerate(stack.layers):
            alpha = _alpha(np.asarray(stack.scale)[n], k, rslora)
            module = LoraModule(target.arch.module_path(role, layer), role, layer, k, alpha)
            factors[module] = (np.asarray(stack.a[n]), np.asarray(stack.b[n]))
    with staged_output(Path(folder)) as staging:
        write_target_adapter(staging, base_config, target, factors, dtype)


def _alpha(scale: np.floating, rank: int, rslora: bool) -> float:
    """The lora_alpha giving `scale` at `rank`: the nearest whole number where it gives back the
    same scale in the stack's precision (α as users write it), else the product itself."""
    alpha = float(scale) * (math.sqrt(rank) if rslora else rank)
    whole = float(round(alpha))
    same = np.asarray(lora_scale(whole, rank, use_rslora=rslora), scale.dtype) == scale
    return whole if same else alpha


def _check_stack(folder: Path, target: ModelConfig, role: str, stack: LoraStack) -> None:
    """Refuse a stack that would write something other than it holds (nothing is written then)."""
    if role not in target.shapes:
        raise AdapterError(folder, f"role {role!r} is not a role of the target ({target.model_type}): "
                                   f"one of {', '.join(target.shapes)}")  # fmt: skip
    a, b, scale = np.shape(stack.a), np.shape(stack.b), np.shape(stack.scale)
    if len(a) != 3 or len(b) != 3:
        raise AdapterError(folder, f"role {role}: a and b must be [L, k, n] and [L, m, k] stacks, got {a} and {b}")
    counts = {"a": a[0], "b": b[0], "scale": scale[0] if scale else None}
    if stack.layers is None or any(n != len(stack.layers) for n in counts.values()):
        held = ", ".join(f"{k} {n}" for k, n in counts.items())
        named = () if stack.layers is None else tuple(stack.layers)
        raise AdapterError(folder, f"role {role}: `layers` names {len(named)} layers {named} but "
                                   f"the stack holds {held} along its leading axis; set `layers` to the target layer "
                                   "of each row (LoraStack.for_target_layers re-indexes a source stack)")  # fmt: skip
    bad = [j for j in stack.layers if not 0 <= j < target.num_layers]
    if bad or len(set(stack.layers)) != len(stack.layers):
        raise AdapterError(folder, f"role {role}: layers {tuple(stack.layers)} must be distinct target layers in "
                                   f"[0, {target.num_layers})")  # fmt: skip
    m, n = target.shapes[role]
    if a[2] != n or b[1] != m or a[1] != b[2]:
        raise AdapterError(folder, f"role {role}: factors a {a}, b {b} do not fit the target's {m}×{n} weight "
                                   f"(a must be [L, k, {n}], b [L, {m}, k])")  # fmt: skip
