"""Every fact about a `model_type`, in one table: `ARCHITECTURES`.

A row (`ArchSpec`) says where the seven LoRA roles live (a fused module such as phi3's
`qkv_proj` holds several roles, one block of rows each), every tensor name of the checkpoint, and
how the forward pass differs from the llama skeleton (block norms, qk-norm, biases, tying,
activation, attention scale, softcaps, sliding-window layers, per-layer-type RoPE), plus the
transformers class and the extra config fields synthetic fixtures need. The checkpoint reader
(`io.hf_config`), the evaluator (`eval`) and the fixtures (`synthetic`) all read this table;
dimensions come from `config.json` through `model_dims`, the one place head_dim and
kv_heads are derived. Adding an architecture is one row plus its transformers-equality test.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
ATTN_ROLES: tuple[str, ...] = ("q", "k", "v", "o")
MLP_ROLES: tuple[str, ...] = ("gate", "up", "down")

# role -> (out-feature dim name, in-feature dim name); names are `Dims` attributes.
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
# Residual block norms: (before attn, after attn, before mlp, after mlp); None = no norm there.
BlockNorms = tuple[str | None, str | None, str | None, str | None]
_LLAMA_NORMS: BlockNorms = ("input_layernorm", None, "post_attention_layernorm", None)
_SANDWICH_NORMS: BlockNorms = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)
_QK_NORMS: Mapping[str, str] = {"q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}


@dataclasses.dataclass(frozen=True)
class Dims:
    """Projection dimensions of one model, from its config."""

    hidden: int
    inter: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def out_features(self, role: str) -> int:
        return getattr(self, ROLE_DIMS[role][0])


def model_dims(config: Mapping[str, Any]) -> Dims:
    """Dimensions from config.json fields; kv_heads defaults to heads, head_dim to hidden / heads."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    return Dims(
        hidden=hidden,
        inter=int(config["intermediate_size"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
    )


def role_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) = (m, n) of every role's weight, from the config's dimension fields."""
    dims = model_dims(config)
    return {role: (getattr(dims, o), getattr(dims, i)) for role, (o, i) in ROLE_DIMS.items()}


# A tensor's key in the evaluator's canonical layout: (name, layer), layer None for global tensors.
TensorKey = tuple[str, int | None]
# [start, stop) rows of one role inside its fused module's weight (and bias).
RowRange = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One `model_type`: its tensor names and how its forward pass differs from llama's."""

    model_type: str
    causal_lm: str  # the transformers class, written to config.json's "architectures"
    hf_package: str = ""  # its package under transformers.models ("" = model_type)
    layer_prefix: str = "model.layers.{layer}"  # module path of layer `{layer}`
    role_modules: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(_LLAMA_MODULES))
    # Modules that hold several roles, one block of output rows each: module -> its roles in row
    # order (phi3: self_attn.qkv_proj -> q, k, v). Their `role_modules` entries follow from this.
    fused_modules: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    embed_name: str = "model.embed_tokens.weight"
    final_norm_name: str = "model.norm.weight"
    lm_head_name: str = "lm_head.weight"
    block_norms: BlockNorms = _LLAMA_NORMS
    qk_norms: Mapping[str, str] = dataclasses.field(default_factory=dict)  # RMSNorm over head_dim of q, k
    norm_offset: float = 0.0  # RMSNorm multiplies by (offset + w): gemma stores w - 1
    embed_scale: bool = False  # multiply embeddings by sqrt(hidden)
    activation_field: str = "hidden_act"
    default_activation: str = "silu"
    legacy_activations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    fixed_biases: tuple[str, ...] = ()  # roles with a bias whatever the config says
    honours_attention_bias: bool = False  # `attention_bias` adds q/k/v/o biases
    honours_mlp_bias: bool = False  # `mlp_bias` adds gate/up/down biases
    query_pre_attn_scalar: bool = False  # attention scale is query_pre_attn_scalar**-0.5
    # softcaps applied as transformers' class does (it ignores the field where False)
    attn_softcap: bool = False  # attn_logit_softcapping
    final_softcap: bool = False  # final_logit_softcapping
    default_tied: bool = False
    # which layers slide when config.json has no `layer_types`:
    # none | all | alternate (even layers) | qwen (use_sliding_window, from max_window_layers)
    # | pattern (every `sliding_window_pattern`-th layer is global, the rest slide)
    window_rule: str = "none"
    default_rope_theta: float = 10000.0
    # When set, sliding layers rotate with this field's theta (unscaled) and `rope_scaling`
    # applies to full-attention layers only; `rope_parameters` may then be per layer type.
    local_rope_theta_field: str | None = None
    default_local_rope_theta: float = 10000.0
    # extra config.json fields of synthetic fixtures (besides query_pre_attn_scalar = head_dim)
    fixture_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        fused = {role: module for module, roles in self.fused_modules.items() for role in roles}
        for module, roles in self.fused_modules.items():  # one input per module: the roles share lora_A
            if len({ROLE_DIMS[role][1] for role in roles}) != 1:
                raise ValueError(f"{self.model_type}: the roles of fused module {module} differ in input size")
        object.__setattr__(self, "role_modules", {**self.role_modules, **fused})

    def fused_roles(self, role: str) -> tuple[str, ...]:
        """The roles stored in `role`'s weight tensor, in row order: `(role,)` unless it is fused."""
        return next((roles for roles in self.fused_modules.values() if role in roles), (role,))

    def row_ranges(self, dims: Dims) -> dict[str, RowRange]:
        """[start, stop) rows of each fused role inside its module's weight; unfused roles absent."""
        out = {}
        for roles in self.fused_modules.values():
            start = 0
            for role in roles:
                out[role] = (start, start + dims.out_features(role))
                start += dims.out_features(role)
        return out

    def module_path(self, role: str, layer: int) -> str:
        return f"{self.layer_prefix.format(layer=layer)}.{self.role_modules[role]}"

    def weight_name(self, role: str, layer: int) -> str:
        return f"{self.module_path(role, layer)}.weight"

    def parse_module_path(self, path: str) -> tuple[tuple[str, ...], int] | None:
        """Inverse of `module_path`: (the roles the module holds, in row order; layer), or None
        when `path` is no projection."""
        prefix = re.escape(self.layer_prefix).replace(r"\{layer\}", r"(?P<layer>\d+)")
        for role, inner in self.role_modules.items():
            m = re.fullmatch(rf"{prefix}\.{re.escape(inner)}", path)
            if m:
                return self.fused_roles(role), int(m.group("layer"))
        return None

    @property
    def modeling_module(self) -> str:
        """The transformers module that defines `causal_lm` (PEFT's auto_mapping names it)."""
        package = self.hf_package or self.model_type
        return f"transformers.models.{package}.modeling_{package}"

    @property
    def qk_norm(self) -> bool:
        return bool(self.qk_norms)

    @property
    def norm_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.block_norms if n is not None)

    def biases(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        """Roles whose projection has a bias in a model with this config."""
        biases = list(self.fixed_biases)
        if self.honours_attention_bias and config.get("attention_bias"):
            biases += [r for r in ATTN_ROLES if r not in biases]
        if self.honours_mlp_bias and config.get("mlp_bias"):
            biases += list(MLP_ROLES)
        return tuple(biases)

    def tied(self, config: Mapping[str, Any]) -> bool:
        """Whether the LM head is the embedding matrix (no lm_head tensor stored)."""
        return bool(config.get("tie_word_embeddings", self.default_tied))

    def tensor_names(self, num_layers: int, *, tied: bool, biases: tuple[str, ...]) -> dict[TensorKey, str]:
        """Canonical key -> HF tensor name, for every tensor of the checkpoint.

        Keys: ("embed" | "norm" | "lm_head", None) and per layer (role | "<role>_bias" |
        block norm name | "q_norm" | "k_norm", layer). The roles of a fused module share its
        names; `row_ranges` says which rows each holds.
        """
        names: dict[TensorKey, str] = {("embed", None): self.embed_name, ("norm", None): self.final_norm_name}
        if not tied:
            names["lm_head", None] = self.lm_head_name
        for layer in range(num_layers):
            prefix = self.layer_prefix.format(layer=layer)
            for role in ROLES:
                names[role, layer] = self.weight_name(role, layer)
            for role in biases:
                names[f"{role}_bias", layer] = f"{self.module_path(role, layer)}.bias"
            for norm in self.norm_names:
                names[norm, layer] = f"{prefix}.{norm}.weight"
            for key, module in self.qk_norms.items():
                names[key, layer] = f"{prefix}.{module}.weight"
        return names


def tensor_shape(key: str, dims: Dims, vocab: int) -> tuple[int, ...]:
    """Shape of the tensor with canonical key `key` (see `ArchSpec.tensor_names`); a fused role's
    own block, not its module's whole tensor."""
    if key in ("embed", "lm_head"):
        return (vocab, dims.hidden)
    if key in ROLE_DIMS:
        return (dims.out_features(key), getattr(dims, ROLE_DIMS[key][1]))
    if key.endswith("_bias"):
        return (dims.out_features(key.removesuffix("_bias")),)
    if key in _QK_NORMS:
        return (dims.head_dim,)
    return (dims.hidden,)  # final and block norms


_GEMMA: Mapping[str, Any] = dict(
    norm_offset=1.0,
    embed_scale=True,
    default_activation="gelu_pytorch_tanh",
    honours_attention_bias=True,
    default_tied=True,
)

ARCHITECTURES: Mapping[str, ArchSpec] = {
    spec.model_type: spec
    for spec in (
        ArchSpec("llama", "LlamaForCausalLM", honours_attention_bias=True, honours_mlp_bias=True),
        ArchSpec("mistral", "MistralForCausalLM", window_rule="all"),
        ArchSpec("qwen2", "Qwen2ForCausalLM", fixed_biases=("q", "k", "v"), window_rule="qwen"),
        ArchSpec("qwen3", "Qwen3ForCausalLM", qk_norms=_QK_NORMS, honours_attention_bias=True, window_rule="qwen"),
        ArchSpec(
            "gemma",
            "GemmaForCausalLM",
            **_GEMMA,
            legacy_activations={"gelu": "gelu_pytorch_tanh"},  # transformers rewrites it the same way
            fixture_config={"hidden_activation": "gelu_pytorch_tanh"},
        ),
        ArchSpec(
            "gemma2",
            "Gemma2ForCausalLM",
            **_GEMMA,
            activation_field="hidden_activation",
            block_norms=_SANDWICH_NORMS,
            query_pre_attn_scalar=True,
            attn_softcap=True,
            final_softcap=True,
            window_rule="alternate",
            fixture_config={
                "hidden_activation": "gelu_pytorch_tanh",
                "sliding_window": 256,
                "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0,
            },
        ),
        ArchSpec(
            "gemma3_text",
            "Gemma3ForCausalLM",
            hf_package="gemma3",
            **_GEMMA,
            activation_field="hidden_activation",
            block_norms=_SANDWICH_NORMS,
            qk_norms=_QK_NORMS,
            query_pre_attn_scalar=True,
            final_softcap=True,  # transformers' Gemma3 attention ignores attn_logit_softcapping
            window_rule="pattern",
            default_rope_theta=1_000_000.0,
            local_rope_theta_field="rope_local_base_freq",
            fixture_config={"hidden_activation": "gelu_pytorch_tanh", "sliding_window": 256},
        ),
        ArchSpec(
            "phi3",
            "Phi3ForCausalLM",
            fused_modules={"self_attn.qkv_proj": ("q", "k", "v"), "mlp.gate_up_proj": ("gate", "up")},
            window_rule="all",  # `sliding_window`, when set, applies to every layer
            # transformers' default token ids (pad, eos 32000) lie outside a fixture's vocabulary
            fixture_config={"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
        ),
    )
}

_FUSED_SUFFIXES = tuple(sorted({f".{module}" for spec in ARCHITECTURES.values() for module in spec.fused_modules}))


def is_fused_module(path: str) -> bool:
    """Whether a module path names a fused module of some row (phi3's ...self_attn.qkv_proj), i.e.
    a path that holds several roles."""
    return path.endswith(_FUSED_SUFFIXES)


# model_type -> why it is refused rather than guessed at.
REFUSED_ARCHITECTURES: Mapping[str, str] = {
    "gemma3": (
        "the multimodal Gemma3ForConditionalGeneration wrapper (nested text_config, language_model.* tensors) "
        "is not read; use a Gemma3ForCausalLM checkpoint (model_type gemma3_text)"
    ),
}

# config.json fields that change what the stored weights mean; refused by name when set.
REFUSED_CONFIG_FIELDS: Mapping[str, str] = {
    "quantization_config": "quantized weights are not dequantized by crosslora_jax",
    "num_local_experts": "mixture-of-experts MLPs have no single gate/up/down projection",
    "num_experts": "mixture-of-experts MLPs have no single gate/up/down projection",
}
