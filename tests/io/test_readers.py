"""The io layer on good and refused inputs: checkpoints, configs, adapters, written configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crosslora_jax import AdapterError, Checkpoint, ConfigError, read_adapter, read_model_config, synthetic
from crosslora_jax.arch import ARCHITECTURES, role_shapes
from crosslora_jax.io.peft_adapter import _REFUSED_FIELDS, adapter_config_for_target, pattern_value

CFG = synthetic.model_config("qwen2", hidden=32, intermediate=48, heads=4, kv_heads=2, layers=3)
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_single_file_and_sharded_checkpoints_read_the_same(tmp_path, dtype) -> None:
    tensors = synthetic.model_tensors(CFG, seed=0)
    one = Checkpoint(synthetic.write_model(tmp_path / "one", CFG, tensors, dtype=dtype))
    many = Checkpoint(synthetic.write_model(tmp_path / "many", CFG, tensors, dtype=dtype, shards=4))
    assert len({p.name for p in many.fingerprint_files()}) == 5  # index + 4 shards
    names = [ARCHITECTURES["qwen2"].weight_name(role, layer) for role in ("q", "down") for layer in range(3)]
    for name in names:
        a, b = one.read_f32(name), many.read_f32(name)
        assert a.dtype == np.float32 and np.array_equal(a, b)
        tolerance = {"float32": 0, "float16": 1e-3, "bfloat16": 1e-2}[dtype]
        np.testing.assert_allclose(a, tensors[name], rtol=tolerance, atol=tolerance * np.abs(tensors[name]).max())
    assert one.read_stack(names[:3]).shape == (3, 32, 32)


def test_reading_needs_no_torch(tmp_path) -> None:
    folder = synthetic.write_model(tmp_path / "m", CFG, synthetic.model_tensors(CFG, seed=0), dtype="bfloat16")
    code = (f"import sys; from crosslora_jax import Checkpoint; c = Checkpoint({str(folder)!r});"
            "c.read_f32('model.layers.0.mlp.down_proj.weight'); assert 'torch' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_architecture_config(tmp_path, model_type) -> None:
    cfg = synthetic.model_config(model_type, hidden=64, intermediate=96, heads=8, kv_heads=2, layers=2, head_dim=16)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    model = read_model_config(folder)
    assert model.num_layers == 2
    assert model.shapes["q"] == (128, 64) and model.shapes["k"] == (32, 64) and model.shapes["o"] == (64, 128)
    assert model.shapes["down"] == (64, 96)
    up = "mlp.gate_up_proj" if model.arch.fused_modules else "mlp.up_proj"
    assert model.arch.parse_module_path(f"model.layers.1.{up}")[1] == 1
    assert "up" in model.arch.parse_module_path(f"model.layers.1.{up}")[0]


def test_head_dim_defaults_to_hidden_over_heads() -> None:
    shapes = role_shapes({"hidden_size": 64, "intermediate_size": 8, "num_attention_heads": 4})
    assert shapes["k"] == (64, 64)  # no num_key_value_heads: MHA


def test_inconsistent_heads_are_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**CFG, "num_key_value_heads": 3}))
    with pytest.raises(ConfigError, match="not a multiple"):
        read_model_config(tmp_path)


@pytest.fixture
def model_and_adapter(tmp_path):
    model = synthetic.write_model(tmp_path / "m", CFG, synthetic.model_tensors(CFG, seed=0))
    return read_model_config(model), tmp_path / "a"


def _adapter(folder: Path, **config) -> Path:
    return synthetic.write_adapter(folder, CFG, seed=1, roles=("q", "v", "down"), rank=4, alpha=8, extra_config=config)


def test_adapter_fields_are_honoured(model_and_adapter) -> None:
    model, folder = model_and_adapter
    adapter = read_adapter(_adapter(folder, use_rslora=True, alpha_pattern={"down_proj": 2}), model)
    assert adapter.use_rslora and len(adapter.modules) == 9
    down, q = adapter.modules[("down", 0)], adapter.modules[("q", 2)]
    assert down.alpha == 2 and q.alpha == 8
    assert adapter.scale(q) == pytest.approx(8 / 2.0) and adapter.scale(down) == pytest.approx(2 / 2.0)
    a, b = adapter.read_factors([q])
    assert a.shape == (1, 4, 32) and b.shape == (1, 32, 4)


def test_rank_pattern_must_match_the_tensors(model_and_adapter) -> None:
    model, folder = model_and_adapter
    with pytest.raises(AdapterError, match=r"has rank 4 but adapter_config\.json says 6"):
        read_adapter(_adapter(folder, rank_pattern={"v_proj": 6}), model)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [({"target_modules": ["q_proj"]}, "not selected"), ({"target_modules": r".*\.k_proj"}, "not selected"),
     ({"layers_to_transform": [0, 1]}, "not selected"), ({"target_modules": "("}, "not a valid regex")],
)  # fmt: skip
def test_modules_outside_target_modules_or_layers_are_refused(model_and_adapter, config, fragment) -> None:
    model, folder = model_and_adapter
    with pytest.raises(AdapterError, match=fragment):
        read_adapter(_adapter(folder, **config), model)


REFUSALS = {**{field: True for field in _REFUSED_FIELDS}, "bias": "all", "peft_type": "IA3", "fan_in_fan_out": True,
            "modules_to_save": ["lm_head"], "some_future_field": {"on": 1}}  # fmt: skip


@pytest.mark.parametrize("field", sorted(REFUSALS))
def test_each_refusal_names_its_field(model_and_adapter, field) -> None:
    model, folder = model_and_adapter
    with pytest.raises(AdapterError, match=field):
        read_adapter(_adapter(folder, **{field: REFUSALS[field]}), model)


def test_pattern_lookup_follows_peft() -> None:
    patterns = {"model.layers.1.self_attn.q_proj": 2, "q_proj": 3}
    assert pattern_value(patterns, "model.layers.1.self_attn.q_proj", 8) == 2
    assert pattern_value(patterns, "model.layers.11.self_attn.q_proj", 8) == 3
    assert pattern_value(patterns, "model.layers.1.self_attn.k_proj", 8) == 8


def test_written_config_describes_what_was_written(model_and_adapter) -> None:
    model, folder = model_and_adapter
    adapter = read_adapter(_adapter(folder, auto_mapping={"base_model_class": "Qwen2ForCausalLM"}), model)
    full = [m for m in adapter.modules.values()]
    config = adapter_config_for_target(adapter.config, model, full)
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"] and "layers_to_transform" not in config
    assert config["auto_mapping"]["base_model_class"] == "Qwen2ForCausalLM"  # the target's class, not the source's
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    some_layers = [m for m in full if m.layer != 1]
    assert adapter_config_for_target(adapter.config, model, some_layers)["layers_to_transform"] == [0, 2]
    ragged = [m for m in full if not (m.layer == 1 and m.role == "q")]
    config = adapter_config_for_target(adapter.config, model, ragged)
    assert len(config["target_modules"]) == 8 and "model.layers.0.self_attn.q_proj" in config["target_modules"]
