"""Stacked pytrees for JAX code: base weights and LoRA factors with layers on a leading axis.

    stacks = load_weight_stacks("Qwen2.5-1.5B/", roles=["q"])          # {"q": [L, m, n]}
    lora = load_lora_stacks("my_lora/", "Qwen2.5-1.5B/")                # {"q": LoraStack(...)}
    save_lora_stacks("out/", "Llama-3.2-3B/", {"q": transferred}, like="my_lora/")

With `truncated_svd` and `transfer_stack` (both jittable, usable under the caller's own
jit and mesh) these are the pieces `crosslora_jax.transfer` is built from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import numpy as np

from crosslora_jax._errors import AdapterError
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.output_folder import staged_output
from crosslora_jax.io.peft_adapter import LoraModule, read_adapter, read_adapter_config, write_target_adapter
from crosslora_jax.io.safetensors_checkpoint import Checkpoint


class LoraStack(NamedTuple):
    """One role's LoRA over several layers: row i of `a`, `b`, `alpha` is layer `layers[i]`,
    ΔW[layers[i]] = scale(alpha[i]) · b[i] @ a[i]. The leading axis and `layers` must agree."""

    a: Annotated[np.ndarray, "L k n"]
    b: Annotated[np.ndarray, "L m k"]
    layers: tuple[int, ...]
    alpha: Annotated[np.ndarray, " L"]

    def for_target_layers(self, source_of: Sequence[int | None]) -> LoraStack:
        """This LoRA re-indexed onto a model of another depth: `source_of[j]` is the source layer
        feeding target layer j (what `layer_map` returns). The result holds, in order, every
        target layer whose source layer this stack has, with that layer's factors and alpha;
        its `layers` are target layers. The source layer of its row i is `source_of[layers[i]]`."""
        row_of = {layer: row for row, layer in enumerate(self.layers)}
        targets = [j for j, i in enumerate(source_of) if i in row_of]
        rows = np.asarray([row_of[source_of[j]] for j in targets], np.int64)
        return LoraStack(self.a[rows], self.b[rows], tuple(targets), np.asarray(self.alpha)[rows])


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
    """{role: LoraStack} of a PEFT adapter; every module of a role must share one rank."""
    adapter = read_adapter(adapter_dir, read_model_config(source_model_dir))
    out = {}
    for role in adapter.roles():
        modules = sorted((m for m in adapter.modules.values() if m.role == role), key=lambda m: m.layer)
        if len({m.rank for m in modules}) > 1:
            raise AdapterError(adapter.folder, f"role {role} mixes LoRA ranks; use read_adapter(...).read_factors")
        a, b = adapter.read_factors(modules)
        alpha = np.asarray([m.alpha for m in modules], np.float32)
        out[role] = LoraStack(a, b, tuple(m.layer for m in modules), alpha)
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
    (an adapter folder, or an adapter_config dict) and the lora_alpha/use_rslora semantics."""
    target = read_model_config(target_model_dir)
    base_config = dict(like) if isinstance(like, Mapping) else read_adapter_config(like)
    for role, stack in stacks.items():
        _check_stack(Path(folder), target, role, stack)
    factors = {}
    for role, stack in stacks.items():
        for n, layer in enumerate(stack.layers):
            module = LoraModule(target.arch.module_path(role, layer), role, layer, int(stack.a.shape[1]),
                                float(stack.alpha[n]))  # fmt: skip
            factors[module] = (np.asarray(stack.a[n]), np.asarray(stack.b[n]))
    with staged_output(Path(folder)) as staging:
        write_target_adapter(staging, base_config, target, factors, dtype)


def _check_stack(folder: Path, target: ModelConfig, role: str, stack: LoraStack) -> None:
    """Refuse a stack that would write something other than it holds (nothing is written then)."""
    if role not in target.shapes:
        raise AdapterError(folder, f"role {role!r} is not a role of the target ({target.model_type}): "
                                   f"one of {', '.join(target.shapes)}")  # fmt: skip
    a, b, alpha = np.shape(stack.a), np.shape(stack.b), np.shape(stack.alpha)
    if len(a) != 3 or len(b) != 3:
        raise AdapterError(folder, f"role {role}: a and b must be [L, k, n] and [L, m, k] stacks, got {a} and {b}")
    counts = {"a": a[0], "b": b[0], "alpha": alpha[0] if alpha else None}
    if any(n != len(stack.layers) for n in counts.values()):
        held = ", ".join(f"{k} {n}" for k, n in counts.items())
        raise AdapterError(folder, f"role {role}: `layers` names {len(stack.layers)} layers {tuple(stack.layers)} but "
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
