"""Our forward pass agrees with transformers' AutoModelForCausalLM, with and without a PEFT LoRA."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from crosslora_jax._errors import ConfigError
from crosslora_jax.arch import ARCHITECTURES
from crosslora_jax.eval import load_model, logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = pytest.mark.interop

_COMMON = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)
# Per architecture: config overrides that exercise its particular math.
CASES = {
    "llama": dict(rope_theta=500.0, tie_word_embeddings=False),
    "llama_tied_bias": dict(
        model_type="llama", tie_word_embeddings=True, attention_bias=True, mlp_bias=True, hidden_act="gelu"
    ),
    "llama3_rope": dict(
        model_type="llama",
        rope_scaling=dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8,
        ),
    ),
    "mistral": dict(sliding_window=5, head_dim=16),
    "qwen2": dict(rope_theta=1000.0),
    "qwen3": dict(head_dim=8),
    "gemma": dict(head_dim=16),
    "gemma2": dict(
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=4,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
    ),
    # qk-norm, sandwich norms, local/global layers (sliding, full, sliding), local layers with their
    # own unscaled theta, linear RoPE scaling on the global layer only
    "gemma3_text": dict(
        head_dim=16,
        query_pre_attn_scalar=12,
        sliding_window=4,
        sliding_window_pattern=2,
        rope_theta=5000.0,
        rope_local_base_freq=100.0,
        rope_scaling=dict(rope_type="linear", factor=4.0),
        final_logit_softcapping=3.0,
    ),
    # fused qkv_proj (q, k, v rows) and gate_up_proj (gate, up rows); every layer slides; token ids
    # inside the small vocabulary (transformers' defaults are 32000)
    "phi3": dict(head_dim=16, sliding_window=5, rope_theta=1000.0, pad_token_id=0, eos_token_id=2),
}
# LoRA targets per architecture (phi3's fused modules are one LoRA each in PEFT)
_LORA_MODULES = {"phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]}
_LLAMA_LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _randomise(model, seed, norm_centre):
    """Non-trivial norms and biases (transformers initialises them to 1/0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                centre = norm_centre if "norm" in name else 0.0
                p.copy_(0.3 * torch.randn(p.shape, generator=gen) + centre)
            else:
                p.mul_(5.0)  # larger weights: attention and softcaps do something


def _build(case, tmp_path):
    overrides = dict(CASES[case])
    model_type = overrides.pop("model_type", case)
    config = transformers.CONFIG_MAPPING[model_type](**{**_COMMON, **overrides})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    _randomise(model, 1, 0.0 if model_type.startswith("gemma") else 1.0)
    model.save_pretrained(tmp_path / "model")
    return model


def _add_lora(model, tmp_path):
    modules = _LORA_MODULES.get(model.config.model_type, _LLAMA_LORA_MODULES)
    lora_config = peft.LoraConfig(
        r=4,
        lora_alpha=6,
        target_modules=modules,
        rank_pattern={"down_proj": 2},
        alpha_pattern={modules[2]: 3},  # v_proj, or phi3's gate_up_proj
        layers_to_transform=[0, 2],
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    peft_model = peft.get_peft_model(model, lora_config)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(tmp_path / "adapter")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
    return peft.PeftModel.from_pretrained(base.float(), tmp_path / "adapter").eval()


def _tokens(vocab, shape=(2, 11), seed=3):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def _compare(theirs, ours):
    theirs = theirs.detach().numpy()
    ours = np.asarray(ours)
    scale = np.abs(theirs).max()
    assert scale > 1e-2  # a degenerate model would match trivially
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    model = _build(case, tmp_path)
    tokens = _tokens(_COMMON["vocab_size"])
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits
    spec, params = load_model(tmp_path / "model")
    _compare(theirs, logits(spec, params, tokens))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_with_adapter_match_peft(case, tmp_path):
    peft_model = _add_lora(_build(case, tmp_path), tmp_path)
    tokens = _tokens(_COMMON["vocab_size"], seed=4)
    with torch.no_grad():
        theirs = peft_model(torch.tensor(tokens)).logits
    spec, params = load_model(tmp_path / "model", tmp_path / "adapter")
    _, base_params = load_model(tmp_path / "model")
    effect = np.abs(np.asarray(logits(spec, base_params, tokens)) - theirs.numpy()).max()
    assert effect > 0.1 * np.abs(theirs.numpy()).max()  # the adapter matters (here it moves logits ~1× their size)
    _compare(theirs, logits(spec, params, tokens))


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_table_names_the_transformers_class(model_type):
    """Every row's class exists where its modeling_module says (PEFT's auto_mapping names both),
    and AutoModelForCausalLM maps the model_type to it."""
    arch = ARCHITECTURES[model_type]
    module = importlib.import_module(arch.modeling_module)
    assert getattr(module, arch.causal_lm).__name__ == arch.causal_lm
    config_class = transformers.CONFIG_MAPPING[model_type]
    assert transformers.MODEL_FOR_CAUSAL_LM_MAPPING[config_class].__name__ == arch.causal_lm


@pytest.mark.parametrize("rope", ["explicit", "defaults"])
def test_gemma3_config_in_the_older_form(tmp_path, rope):
    """A gemma3_text config.json as transformers 4.x wrote it (rope_theta, rope_local_base_freq,
    rope_scaling, sliding_window_pattern; no layer_types, no per-layer-type rope_parameters):
    transformers reads it, and our logits equal its (defaults: global theta 1e6, local 1e4)."""
    _build("gemma3_text", tmp_path)
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    for field in ("layer_types", "rope_parameters", "rope_theta", "rope_local_base_freq", "rope_scaling"):
        config.pop(field, None)
    if rope == "explicit":
        config.update(rope_theta=5000.0, rope_local_base_freq=100.0, rope_scaling=dict(rope_type="linear", factor=4.0))
    path.write_text(json.dumps(config))
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
    model = model.float().eval()
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    tokens = _tokens(_COMMON["vocab_size"], seed=5)
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits
    spec, params = load_model(tmp_path / "model")
    _compare(theirs, logits(spec, params, tokens))


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "yarn"),
        ("partial_rotary_factor", 0.5, "partial_rotary_factor"),
        ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "partial_rotary"),
        ("hidden_act", "swish_glu", "swish_glu"),
        ("layer_types", ["chunked_attention"] * 3, "chunked_attention"),
    ],
)
def test_unimplemented_config_is_refused_by_name(tmp_path, field, value, named):
    _build("llama", tmp_path)
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    config.pop("rope_parameters", None) if field == "rope_scaling" else None
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=named):
        load_model(tmp_path / "model")


_LONG_FACTORS = [1.0] * 4  # head_dim 8 (hidden 32 / 4 heads): 4 rotary frequency pairs


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("rope_scaling", {"type": "su", "short_factor": _LONG_FACTORS, "long_factor": _LONG_FACTORS}, "'su'"),
        (
            "rope_parameters",
            {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": _LONG_FACTORS, "long_factor": _LONG_FACTORS},
            "'longrope'",
        ),
        ("partial_rotary_factor", 0.75, "partial_rotary_factor"),
        ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.75}, "0.75"),
    ],
)
def test_phi3_configs_the_model_cannot_honour_are_refused_by_field(tmp_path, field, value, named):
    """phi3 checkpoints with long-context RoPE (longrope, formerly "su") or a partial rotary
    factor (Phi-4-mini's 0.75): refused naming the config field, not computed wrongly."""
    _build("phi3", tmp_path)
    path = tmp_path / "model" / "config.json"
    config = json.loads(path.read_text())
    config.pop("rope_parameters", None)
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=field) as e:
        load_model(tmp_path / "model")
    assert named in str(e.value) and str(e.value.where).endswith("config.json")
