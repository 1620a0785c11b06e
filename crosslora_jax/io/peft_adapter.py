"""PEFT LoRA adapter folders: read one written for a source model, write one for a target.

Only safetensors adapters are read (`adapter_model.bin` is pickle and is refused). Every
`adapter_config.json` field that changes what the weights mean is either honoured (r,
lora_alpha, use_rslora, rank_pattern, alpha_pattern, target_modules, layers_to_transform) or
refused by name.

A fused module (phi3's qkv_proj: q, k, v rows) is one LoRA in the file and one `LoraModule` per
role here: reading splits lora_B by the roles' rows (lora_A is shared); writing fuses the roles
of one layer again (`fuse_for_target`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from safetensors.numpy import save_file

from crosslora_jax._errors import AdapterError, CheckpointError
from crosslora_jax.arch import RowRange
from crosslora_jax.io._json import read_json_object, require_dir
from crosslora_jax.io.dtypes import BY_TAG, NUMPY_DTYPES
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.safetensors_checkpoint import SafetensorsFile

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
KEY_PREFIX = "base_model.model."

# Fields whose non-default value changes the meaning of the stored weights: refused by name.
_REFUSED_FIELDS: Mapping[str, str] = {
    "use_dora": "DoRA magnitude vectors are not transferred",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D-style transposed weights) is not supported",
    "modules_to_save": "fully trained modules_to_save are not transferred",
    "lora_bias": "LoRA bias terms are not transferred",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not supported",
    "trainable_token_indices": "trainable token embeddings are not transferred",
    "layer_replication": "layer_replication changes the layer layout and is not supported",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not supported",
    "use_qalora": "QA-LoRA is not supported",
    "use_bdlora": "block-diagonal LoRA is not supported",
    "velora_config": "VeLoRA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
    "arrow_config": "Arrow routing is not supported",
    "kasa_config": "KaSA is not supported",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
}
# Fields that only describe training or initialisation; safe to carry over unchanged.
_KNOWN_FIELDS = frozenset(
    {
        "peft_type",
        "task_type",
        "auto_mapping",
        "peft_version",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "r",
        "target_modules",
        "exclude_modules",
        "lora_alpha",
        "lora_dropout",
        "bias",
        "use_rslora",
        "init_lora_weights",
        "layers_to_transform",
        "layers_pattern",
        "rank_pattern",
        "alpha_pattern",
        "megatron_core",
        "loftq_config",
        "eva_config",
        "corda_config",
        "lora_ga_config",
        "qalora_group_size",
        "runtime_config",
        "ensure_weight_tying",
    }
)


@dataclasses.dataclass(frozen=True)
class LoraModule:
    """One adapted projection of a base model: which one, and its rank and alpha. Where a file
    stores its factors is that file's business (`LoraAdapter.factor_names`)."""

    path: str  # module path in the base model, e.g. "model.layers.3.self_attn.q_proj"
    role: str
    layer: int
    rank: int  # k
    alpha: float


class FactorNames(NamedTuple):
    """The tensor names of one module's factors in an adapter file."""

    a: str  # lora_A [k, n]
    b: str  # lora_B [m, k]
    b_rows: RowRange | None = None  # a fused module's lora_B: this role's rows; None = all


# (A [k, n], B [m, k]) of one module.
Factors = tuple[np.ndarray, np.ndarray]


def lora_scale(alpha: float, rank: int, *, use_rslora: bool) -> float:
    """PEFT's γ: ΔW = γ·B·A with γ = α/k, or α/√k with rslora."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


@dataclasses.dataclass(frozen=True)
class LoraAdapter:
    """A source PEFT adapter: its config and modules; factors are read lazily by layer."""

    folder: Path
    config: Mapping[str, Any]
    use_rslora: bool
    dtype: str  # NUMPY_DTYPES key of the stored factors
    modules: Mapping[tuple[str, int], LoraModule]  # (role, layer) -> module
    factor_names: Mapping[LoraModule, FactorNames]  # each module's tensors in `weights`
    weights: SafetensorsFile

    def roles(self) -> list[str]:
        return sorted({role for role, _ in self.modules})

    def scale(self, module: LoraModule) -> float:
        """γ = α/k, or α/√k with rslora."""
        return lora_scale(module.alpha, module.rank, use_rslora=self.use_rslora)

    def read_factors(self, modules: Sequence[LoraModule]) -> tuple[np.ndarray, np.ndarray]:
        """Float32 (A [L, k, n], B [L, m, k]) of this adapter's modules that share one rank."""
        names = [self.factor_names[m] for m in modules]
        a = np.stack([self._read(n.a) for n in names])
        b = np.stack([self._read(n.b, n.b_rows) for n in names])
        return a, b

    def _read(self, name: str, rows: RowRange | None = None) -> np.ndarray:
        try:
            return self.weights.read_f32(name, rows)
        except CheckpointError as e:
            raise AdapterError(e.where, e.problem) from None


def read_adapter(folder: Path | str, model: ModelConfig) -> LoraAdapter:
    """Read and validate a PEFT LoRA adapter written for `model` (the source base model)."""
    folder = require_dir(Path(folder), AdapterError, "adapter")
    config = read_adapter_config(folder)
    _check_config(folder / CONFIG_FILE, config)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.exists():
        if (folder / PICKLE_FILE).exists():
            raise AdapterError(
                folder / PICKLE_FILE,
                "adapter weights are a pickle file, which crosslora_jax never loads; "
                "re-save the adapter with safe_serialization=True",
            )
        raise AdapterError(weights_path, "file not found")
    try:
        weights = SafetensorsFile(weights_path)
    except CheckpointError as e:
        raise AdapterError(e.where, e.problem) from None
    modules, factor_names = _modules(config, weights, model)
    dtypes = {weights.dtype(name) for names in factor_names.values() for name in (names.a, names.b)}
    unknown = dtypes - set(BY_TAG)
    if unknown:
        raise AdapterError(weights_path, f"LoRA factors have non-float dtype {sorted(unknown)[0]}")
    dtype = BY_TAG[sorted(dtypes)[0]].name if len(dtypes) == 1 else "float32"
    return LoraAdapter(folder, config, bool(config.get("use_rslora")), dtype, modules, factor_names, weights)


def read_adapter_config(folder: Path | str) -> dict[str, Any]:
    """An adapter folder's `adapter_config.json` as read, not yet checked (AdapterError when it is
    missing or not a JSON object)."""
    return read_json_object(Path(folder) / CONFIG_FILE, AdapterError)


def _check_config(path: Path, config: Mapping[str, Any]) -> None:
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterError(path, f"peft_type is {peft_type!r}; only LORA adapters are transferred")
    for field, why in _REFUSED_FIELDS.items():
        if config.get(field):
            raise AdapterError(path, f"field {field!r} is set: {why}")
    if config.get("bias", "none") != "none":
        raise AdapterError(
            path, f"field 'bias' is {config['bias']!r}: only 'none' is supported (bias terms are not transferred)"
        )
    for field, value in config.items():
        if field not in _KNOWN_FIELDS and field not in _REFUSED_FIELDS and value not in (None, False, {}, [], ""):
            raise AdapterError(path, f"field {field!r} is not understood by crosslora_jax and is set to {value!r}")
    _check_positive(path, config, "r")
    _check_positive(path, config, "lora_alpha")
    for field in ("rank_pattern", "alpha_pattern"):
        pattern = config.get(field) or {}
        if not isinstance(pattern, dict):
            raise AdapterError(path, f"field {field!r} must be an object")
        for key, value in pattern.items():
            _check_pattern(path, field, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise AdapterError(path, f"{field}[{key!r}] must be positive, found {value!r}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        _check_pattern(path, "target_modules", targets)
    elif targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise AdapterError(path, "field 'target_modules' must be a string or a list of strings")
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        (isinstance(layers, int) and not isinstance(layers, bool))
        or (isinstance(layers, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in layers))
    ):
        raise AdapterError(path, "field 'layers_to_transform' must be an integer or a list of integers")


def _check_positive(path: Path, config: Mapping[str, Any], field: str) -> None:
    value = config.get(field)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise AdapterError(path, f"field {field!r} must be a positive number, found {value!r}")
    if field == "r" and not isinstance(value, int):
        raise AdapterError(path, f"field 'r' must be an integer, found {value!r}")


def _check_pattern(path: Path, field: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise AdapterError(path, f"{field} pattern {pattern!r} is not a valid regex: {e}") from None


def pattern_value(patterns: Mapping[str, Any], module_path: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key matching the path's tail."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default


def selected_by_config(config: Mapping[str, Any], module_path: str, layer: int) -> bool:
    """Whether target_modules and layers_to_transform select this module (PEFT semantics)."""
    targets = config.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        if not re.fullmatch(targets, module_path):
            return False
    elif isinstance(targets, list) and not any(module_path == t or module_path.endswith("." + t) for t in targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is not None:
        wanted = {layers} if isinstance(layers, int) else set(layers)
        if layer not in wanted:
            return False
    return True


def _modules(
    config: Mapping[str, Any], weights: SafetensorsFile, model: ModelConfig
) -> tuple[dict[tuple[str, int], LoraModule], dict[LoraModule, FactorNames]]:
    where = weights.path
    found: dict[str, dict[str, str]] = {}
    for name in sorted(weights.names()):
        m = re.fullmatch(rf"{re.escape(KEY_PREFIX)}(.+)\.(lora_A|lora_B)\.weight", name)
        if not m:
            raise AdapterError(where, f"tensor {name!r} is not a LoRA factor crosslora_jax can transfer")
        found.setdefault(m.group(1), {})[m.group(2)] = name
    if not found:
        raise AdapterError(where, "no LoRA factors found")
    modules: dict[tuple[str, int], LoraModule] = {}
    names: dict[LoraModule, FactorNames] = {}
    for path, factors in found.items():
        if set(factors) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(factors)).pop()
            raise AdapterError(where, f"module {path!r} has no {missing} factor")
        parsed = model.arch.parse_module_path(path)
        if parsed is None:
            raise AdapterError(
                where,
                f"module {path!r} is not a q/k/v/o/gate/up/down projection of a "
                f"{model.model_type} model (is this the adapter for the source model?)",
            )
        roles, layer = parsed
        if layer >= model.num_layers:
            raise AdapterError(where, f"module {path!r} is beyond the source model's {model.num_layers} layers")
        if not selected_by_config(config, path, layer):
            raise AdapterError(
                where, f"module {path!r} is not selected by {CONFIG_FILE}'s target_modules/layers_to_transform"
            )
        a_shape, b_shape = weights.shape(factors["lora_A"]), weights.shape(factors["lora_B"])
        m_s, n_s = model.stored_shape(roles[0])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != n_s or b_shape[0] != m_s or a_shape[0] != b_shape[1]:
            raise AdapterError(
                where,
                f"module {path!r} has lora_A {list(a_shape)} and lora_B {list(b_shape)}, which do not fit "
                f"the source model's [{m_s}, {n_s}] weight (wrong source model?)",
            )
        rank = a_shape[0]
        want_rank = pattern_value(config.get("rank_pattern") or {}, path, config["r"])
        if rank != want_rank:
            raise AdapterError(where, f"module {path!r} has rank {rank} but {CONFIG_FILE} says {want_rank}")
        alpha = float(pattern_value(config.get("alpha_pattern") or {}, path, config["lora_alpha"]))
        for role in roles:  # a fused module: one module per role, lora_A shared, lora_B split by rows
            module = LoraModule(path, role, layer, rank, alpha)
            modules[(role, layer)] = module
            names[module] = FactorNames(factors["lora_A"], factors["lora_B"], model.row_ranges.get(role))
    return modules, names


def adapter_config_for_target(
    source_config: Mapping[str, Any],
    target: ModelConfig,
    written: Iterable[LoraModule],
) -> dict[str, Any]:
    """The adapter_config.json that describes exactly the modules written for `target`, one per
    module path (fused modules already fused: `fuse_for_target`)."""
    written = sorted(written, key=lambda m: (m.layer, m.role))
    config = {
        k: v
        for k, v in source_config.items()
        if k
        not in {
            "rank_pattern",
            "alpha_pattern",
            "target_modules",
            "layers_to_transform",
            "layers_pattern",
            "exclude_modules",
            "base_model_name_or_path",
            "revision",
            "auto_mapping",
        }  # auto_mapping names the source model's class
    }
    r, alpha = source_config["r"], source_config["lora_alpha"]
    leaves = sorted({m.path.rsplit(".", 1)[-1] for m in written})
    layers = sorted({m.layer for m in written})
    if len(written) == len(leaves) * len(layers):  # a full grid of modules x layers
        config["target_modules"] = leaves
        if len(layers) != target.num_layers:
            config["layers_to_transform"] = layers
            config["layers_pattern"] = target.arch.layer_prefix.split(".")[-2]
    else:
        config["target_modules"] = [m.path for m in written]
    config["base_model_name_or_path"] = target.name_or_path
    # PEFT's AutoPeftModel builds the base with this class when task_type is unset: name the target's.
    architectures = target.raw.get("architectures")
    if source_config.get("auto_mapping") and isinstance(architectures, list) and architectures:
        config["auto_mapping"] = {"base_model_class": architectures[0], "parent_library": target.arch.modeling_module}
    config["r"], config["lora_alpha"] = r, alpha
    config["rank_pattern"] = {m.path: m.rank for m in written if m.rank != r}
    config["alpha_pattern"] = {m.path: m.alpha for m in written if m.alpha != alpha}
    return config


def fuse_for_target(
    target: ModelConfig, factors: Mapping[LoraModule, Factors], *, use_rslora: bool
) -> dict[LoraModule, Factors]:
    """Target modules (one per role) as the target's adapter file stores them: one per module path
    (a fused module's `LoraModule` names its first role).

    The roles of one fused module and layer (phi3's q, k, v in qkv_proj) become one LoRA of rank
    K = Σk: A the roles' A stacked [K, n], B block diagonal [m, K] with each role's block at its
    rows of the module (a role not written keeps zero rows). The fused alpha makes its scale γ the
    first role's, and each block is multiplied by γ_role/γ, so every role keeps ΔW = γ_role·B·A
    whatever its own rank and alpha. Unfused modules pass through unchanged.
    """
    by_path: dict[str, list[LoraModule]] = defaultdict(list)
    for module in factors:
        by_path[module.path].append(module)
    out: dict[LoraModule, Factors] = {}
    for path, modules in by_path.items():
        if len(modules) == 1 and modules[0].role not in target.row_ranges:
            out[modules[0]] = factors[modules[0]]
            continue
        modules.sort(key=lambda m: target.row_ranges[m.role])
        first, rank = modules[0], sum(m.rank for m in modules)
        # alpha such that lora_scale(alpha, rank) is the first role's γ (exact when ranks are equal)
        alpha = first.alpha * (math.sqrt(rank / first.rank) if use_rslora else rank / first.rank)
        gamma = lora_scale(first.alpha, first.rank, use_rslora=use_rslora)
        a_blocks, b_blocks = zip(*(factors[m] for m in modules), strict=True)
        a = np.concatenate(a_blocks)
        b = np.zeros((target.stored_shape(first.role)[0], rank), np.result_type(*b_blocks))
        col = 0
        for module, block in zip(modules, b_blocks, strict=True):
            start, stop = target.row_ranges[module.role]
            ratio = lora_scale(module.alpha, module.rank, use_rslora=use_rslora) / gamma
            b[start:stop, col : col + module.rank] = block if ratio == 1.0 else block * ratio
            col += module.rank
        out[LoraModule(path, first.role, first.layer, rank, alpha)] = (a, b)
    return out


def write_target_adapter(
    folder: Path,
    source_config: Mapping[str, Any],
    target: ModelConfig,
    factors: Mapping[LoraModule, Factors],
    dtype: str,
) -> None:
    """Write target modules' factors (one entry per role) as a PEFT adapter for `target`: fused
    modules fused (`fuse_for_target`), the adapter_config.json describing exactly what was written,
    its other fields and the meaning of lora_alpha/use_rslora taken from `source_config`."""
    stored = fuse_for_target(target, factors, use_rslora=bool(source_config.get("use_rslora")))
    config = adapter_config_for_target(source_config, target, stored)
    write_adapter(folder, {m.path: ab for m, ab in stored.items()}, config, dtype)


def write_adapter(
    folder: Path,
    factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    config: Mapping[str, Any],
    dtype: str,
) -> None:
    """Write `adapter_model.safetensors` (module path -> (A, B)) and `adapter_config.json`."""
    np_dtype = NUMPY_DTYPES[dtype]
    tensors = {}
    for path, (a, b) in factors.items():
        tensors[f"{KEY_PREFIX}{path}.lora_A.weight"] = np.ascontiguousarray(a, dtype=np_dtype)
        tensors[f"{KEY_PREFIX}{path}.lora_B.weight"] = np.ascontiguousarray(b, dtype=np_dtype)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
