"""crosslora_jax.io.hf_config: every architecture, head_dim, GQA, and each refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosslora_jax import ConfigError, read_model_config, synthetic
from crosslora_jax.arch import ARCHITECTURES


def _write(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _config(arch: str = "llama", **overrides) -> dict:
    config = synthetic.model_config(arch, hidden=64, intermediate=96, heads=8, kv_heads=2, layers=3)
    config.update(overrides)
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_architecture_gqa_and_head_dim(tmp_path, model_type):
    config = _config(model_type, head_dim=16)  # q_dim = 8·16 = 128 ≠ hidden; kv_dim = 2·16
    cfg = read_model_config(_write(tmp_path / "m", config))
    assert cfg.model_type == model_type
    assert cfg.arch is ARCHITECTURES[model_type]
    assert cfg.num_layers == 3
    assert cfg.shapes == {
        "q": (128, 64),
        "k": (32, 64),
        "v": (32, 64),
        "o": (64, 128),
        "gate": (96, 64),
        "up": (96, 64),
        "down": (64, 96),
    }
    fused = model_type == "phi3"  # q, k, v rows in one qkv_proj; gate, up in one gate_up_proj
    k_module = "self_attn.qkv_proj" if fused else "self_attn.k_proj"
    assert cfg.arch.weight_name("k", 2) == f"model.layers.2.{k_module}.weight"
    assert cfg.arch.parse_module_path(f"model.layers.2.{k_module}") == (("q", "k", "v") if fused else ("k",), 2)
    assert cfg.arch.parse_module_path("model.layers.2.mlp.down_proj") == (("down",), 2)
    assert cfg.arch.parse_module_path("model.layers.2.mlp.down_proj.lora_A") is None
    # rows of each fused role from the dimensions above: q 128, k 32, v 32; gate 96, up 96
    want_rows = {"q": (0, 128), "k": (128, 160), "v": (160, 192), "gate": (0, 96), "up": (96, 192)}
    assert cfg.row_ranges == (want_rows if fused else {})
    assert cfg.stored_shape("v") == ((192, 64) if fused else (32, 64))
    assert cfg.stored_shape("o") == (64, 128)


def test_defaults_head_dim_and_kv_heads(tmp_path):
    cfg = read_model_config(_write(tmp_path / "a", _config(head_dim=None, num_key_value_heads=None)))
    assert cfg.shapes["q"] == (64, 64)
    assert cfg.shapes["k"] == (64, 64)  # no num_key_value_heads: plain multi-head attention
    cfg = read_model_config(_write(tmp_path / "b", _config(head_dim=None)))
    assert cfg.shapes["v"] == (16, 64)  # GQA: 2 kv heads of 64/8


def test_name_or_path(tmp_path):
    folder = _write(tmp_path / "m", _config())
    assert read_model_config(folder).name_or_path == str(folder.resolve())
    _write(folder, _config(_name_or_path="org/model"))
    assert read_model_config(folder).name_or_path == "org/model"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model_type": "gemma3"}, "'gemma3' is not supported: the multimodal"),
        ({"model_type": "gpt2"}, "unknown model_type 'gpt2'; supported: gemma, gemma2, gemma3_text, llama"),
        ({"model_type": None}, "missing string field 'model_type'"),
        ({"quantization_config": {"bits": 4}}, "'quantization_config' is set"),
        ({"num_local_experts": 8}, "'num_local_experts' is set"),
        ({"num_experts": 8}, "'num_experts' is set"),
        ({"hidden_size": None}, "missing field 'hidden_size'"),
        ({"num_hidden_layers": 0}, "'num_hidden_layers' must be a positive integer"),
        ({"intermediate_size": 9.5}, "'intermediate_size' must be a positive integer"),
        ({"num_attention_heads": True}, "'num_attention_heads' must be a positive integer"),
        ({"head_dim": "8"}, "'head_dim' must be a positive integer"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        ({"num_attention_heads": 6, "num_key_value_heads": 6, "head_dim": None}, "hidden_size is not a multiple"),
    ],
)
def test_refusals(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        read_model_config(_write(tmp_path / "m", _config(**overrides)))
    assert e.value.where.endswith("config.json")


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="model folder not found"):
        read_model_config(tmp_path / "absent")
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="file not found"):
        read_model_config(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="malformed JSON"):
        read_model_config(tmp_path / "m")
