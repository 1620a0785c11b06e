"""Architecture knowledge as tables: which weights a LoRA role lives in, and their shapes.

Roles are the seven projections Cross-LoRA transfers. Shapes are derived from `config.json`
fields through `ROLE_DIMS`; module paths through `ArchSpec.module_template`. Adding an
architecture whose projections use the llama naming is one row in `ARCHITECTURES`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

# role -> (out-feature dim name, in-feature dim name); names resolved by `role_shapes`.
ROLE_DIMS: Mapping[str, tuple[str, str]] = {
    "q": ("q_dim", "hidden"),
    "k": ("kv_dim", "hidden"),
    "v": ("kv_dim", "hidden"),
    "o": ("hidden", "q_dim"),
    "gate": ("inter", "hidden"),
    "up": ("inter", "hidden"),
    "down": ("hidden", "inter"),
}

_LLAMA_MODULES: Mapping[str, str] = {
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
}


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Where one architecture keeps its per-layer projection weights."""

    model_type: str
    layer_prefix: str  # module path of layer `{layer}`, e.g. "model.layers.{layer}"
    role_modules: Mapping[str, str]  # role -> module path inside a layer

    def module_path(self, role: str, layer: int) -> str:
        return f"{self.layer_prefix.format(layer=layer)}.{self.role_modules[role]}"

    def weight_name(self, role: str, layer: int) -> str:
        return f"{self.module_path(role, layer)}.weight"

    def parse_module_path(self, path: str) -> tuple[str, int] | None:
        """Inverse of `module_path`: (role, layer), or None when `path` is no projection."""
        prefix = re.escape(self.layer_prefix).replace(r"\{layer\}", r"(?P<layer>\d+)")
        for role, inner in self.role_modules.items():
            m = re.fullmatch(rf"{prefix}\.{re.escape(inner)}", path)
            if m:
                return role, int(m.group("layer"))
        return None


ARCHITECTURES: Mapping[str, ArchSpec] = {
    name: ArchSpec(name, "model.layers.{layer}", _LLAMA_MODULES)
    for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")
}

# model_type -> why it is refused rather than guessed at.
REFUSED_ARCHITECTURES: Mapping[str, str] = {
    "phi3": (
        "fused qkv_proj / gate_up_proj projections are not split into roles by this version; "
        "unfuse the checkpoint and adapter first"
    ),
}

# config.json fields that change what the stored weights mean; refused by name when set.
REFUSED_CONFIG_FIELDS: Mapping[str, str] = {
    "quantization_config": "quantized weights are not dequantized by crosslora_jax",
    "num_local_experts": "mixture-of-experts MLPs have no single gate/up/down projection",
    "num_experts": "mixture-of-experts MLPs have no single gate/up/down projection",
}


def role_shapes(config: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """(out, in) = (m, n) of every role's weight, from the config's dimension fields."""
    hidden = int(config["hidden_size"])  # type: ignore[arg-type]
    heads = int(config["num_attention_heads"])  # type: ignore[arg-type]
    kv_heads = int(config.get("num_key_value_heads") or heads)  # type: ignore[arg-type]
    head_dim = int(config.get("head_dim") or hidden // heads)  # type: ignore[arg-type]
    dims = {
        "hidden": hidden,
        "inter": int(config["intermediate_size"]),  # type: ignore[arg-type]
        "q_dim": heads * head_dim,
        "kv_dim": kv_heads * head_dim,
    }
    return {role: (dims[o], dims[i]) for role, (o, i) in ROLE_DIMS.items()}
