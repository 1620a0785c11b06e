"""crosslora_jax.io.peft_adapter: every adapter_config field honoured or refused; the written config."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from crosslora_jax import AdapterError, read_adapter, read_model_config, synthetic
from crosslora_jax.io import peft_adapter
from crosslora_jax.io.dtypes import NUMPY_DTYPES
from crosslora_jax.io.peft_adapter import KEY_PREFIX, LoraModule, adapter_config_for_target, write_adapter

LAYERS = 3


def _model(tmp_path: Path, arch: str = "llama", name: str = "model", **dims):
    sizes = {"hidden": 32, "intermediate": 48, "heads": 4, "kv_heads": 2, "layers": LAYERS, **dims}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(synthetic.model_config(arch, **sizes)))
    return read_model_config(folder)


def _write(folder: Path, model, ranks: dict[tuple[str, int], int], dtype=np.float32, *, seed=0, **config) -> Path:
    """An adapter with the given per-module ranks; config fields set to None are left out."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for (role, layer), k in ranks.items():
        m, n = model.shapes[role]
        path = model.arch.module_path(role, layer)
        tensors[f"{KEY_PREFIX}{path}.lora_A.weight"] = rng.standard_normal((k, n)).astype(dtype)
        tensors[f"{KEY_PREFIX}{path}.lora_B.weight"] = rng.standard_normal((m, k)).astype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    fields = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    fields.update(config)
    (folder / "adapter_config.json").write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    return folder


def _grid(roles=("q", "v"), layers=range(LAYERS), rank=8) -> dict[tuple[str, int], int]:
    return {(role, layer): rank for layer in layers for role in roles}


def test_r_and_lora_alpha(tmp_path):
    model = _model(tmp_path)
    adapter = read_adapter(_write(tmp_path / "a", model, _grid(rank=8), r=8, lora_alpha=12), model)
    assert set(adapter.modules) == set(_grid())
    assert adapter.roles() == ["q", "v"]
    assert adapter.dtype == "float32"
    assert not adapter.use_rslora
    for module in adapter.modules.values():
        assert (module.rank, module.alpha) == (8, 12.0)
        assert module.path == model.arch.module_path(module.role, module.layer)
        assert adapter.scale(module) == pytest.approx(12 / 8)
    a, b = adapter.read_factors([adapter.modules[("v", 0)], adapter.modules[("v", 2)]])
    assert a.shape == (2, 8, 32)
    assert b.shape == (2, 16, 8)
    assert a.dtype == b.dtype == np.float32


def test_use_rslora(tmp_path):
    model = _model(tmp_path)
    adapter = read_adapter(_write(tmp_path / "a", model, _grid(rank=4), r=4, lora_alpha=6, use_rslora=True), model)
    assert adapter.use_rslora
    assert adapter.scale(adapter.modules[("q", 1)]) == pytest.approx(6 / math.sqrt(4))


def test_rank_and_alpha_patterns(tmp_path):
    model = _model(tmp_path)
    ranks = {**_grid(rank=8), ("v", 0): 2, ("v", 1): 2, ("v", 2): 2, ("q", 1): 3}
    folder = _write(
        tmp_path / "a",
        model,
        ranks,
        rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 3},
        alpha_pattern={"q_proj": 5, r"model\.layers\.2\.self_attn\.v_proj": 7},
    )
    adapter = read_adapter(folder, model)
    got = {key: (m.rank, m.alpha) for key, m in adapter.modules.items()}
    assert got == {
        ("q", 0): (8, 5.0),
        ("q", 1): (3, 5.0),
        ("q", 2): (8, 5.0),
        ("v", 0): (2, 16.0),
        ("v", 1): (2, 16.0),
        ("v", 2): (2, 7.0),
    }
    assert adapter.scale(adapter.modules[("q", 1)]) == pytest.approx(5 / 3)


def test_pattern_keys_match_whole_name_segments():
    assert peft_adapter.pattern_value({"q_proj": 1}, "model.layers.0.self_attn.q_proj", 9) == 1
    assert peft_adapter.pattern_value({"proj": 1}, "model.layers.0.self_attn.q_proj", 9) == 9
    assert peft_adapter.pattern_value({"layers.1.self_attn.q_proj": 1}, "model.layers.11.self_attn.q_proj", 9) == 9
    assert peft_adapter.pattern_value({"v_proj": 1, "q_proj": 2, ".*": 3}, "model.layers.0.self_attn.q_proj", 9) == 2


@pytest.mark.parametrize(
    ("ranks", "config", "message"),
    [
        (_grid(rank=8), {"r": 4}, "has rank 8 but adapter_config.json says 4"),
        (_grid(rank=8), {"rank_pattern": {"v_proj": 4}}, "self_attn.v_proj' has rank 8 but adapter_config.json says 4"),
    ],
)
def test_rank_disagreeing_with_config_refused(tmp_path, ranks, config, message):
    model = _model(tmp_path)
    with pytest.raises(AdapterError, match=message):
        read_adapter(_write(tmp_path / "a", model, ranks, **config), model)


@pytest.mark.parametrize(
    ("roles", "layers", "config"),
    [
        (("q", "v"), range(LAYERS), {"target_modules": ["q_proj", "v_proj"]}),
        (("q",), range(LAYERS), {"target_modules": ["self_attn.q_proj", "mlp.down_proj"]}),
        (("q", "down"), range(LAYERS), {"target_modules": ["model.layers.0.self_attn.q_proj", "q_proj", "down_proj"]}),
        (("q", "down"), range(LAYERS), {"target_modules": r"model\.layers\.\d+\.(self_attn\.q|mlp\.down)_proj"}),
        (("q", "v", "o", "gate", "up", "down"), range(LAYERS), {"target_modules": "all-linear"}),
        (("q", "v"), [1], {"layers_to_transform": 1, "layers_pattern": "layers"}),
        (("q", "v"), [0, 2], {"layers_to_transform": [0, 2]}),
    ],
)
def test_target_modules_and_layers_select(tmp_path, roles, layers, config):
    model = _model(tmp_path)
    adapter = read_adapter(_write(tmp_path / "a", model, _grid(roles, layers), **config), model)
    assert set(adapter.modules) == set(_grid(roles, layers))


@pytest.mark.parametrize(
    ("roles", "layers", "config"),
    [
        (("q", "k"), range(LAYERS), {"target_modules": ["q_proj", "v_proj"]}),
        (("q",), range(LAYERS), {"target_modules": ["_proj"]}),
        (("q",), range(LAYERS), {"target_modules": "q_proj"}),  # a regex must match the whole path
        (("q",), range(LAYERS), {"target_modules": r"model\.layers\.[01]\.self_attn\.q_proj"}),
        (("q", "v"), range(LAYERS), {"layers_to_transform": [0, 1]}),
        (("q", "v"), range(LAYERS), {"layers_to_transform": 2}),
    ],
)
def test_modules_outside_target_modules_or_layers_refused(tmp_path, roles, layers, config):
    model = _model(tmp_path)
    with pytest.raises(AdapterError, match=re.escape("is not selected by adapter_config.json's target_modules")):
        read_adapter(_write(tmp_path / "a", model, _grid(roles, layers), **config), model)


@pytest.mark.parametrize(
    ("dtypes", "want"),
    [
        ((ml_dtypes.bfloat16,), "bfloat16"),
        ((np.float16,), "float16"),
        ((np.float32,), "float32"),
        ((ml_dtypes.bfloat16, np.float32), "float32"),
    ],
)
def test_adapter_dtype(tmp_path, dtypes, want):
    model = _model(tmp_path)
    folder = _write(tmp_path / "a", model, _grid(), dtype=dtypes[0])
    if len(dtypes) > 1:  # one module re-saved in another dtype
        from safetensors.numpy import load_file

        tensors = load_file(str(folder / "adapter_model.safetensors"))
        name = next(iter(tensors))
        tensors[name] = tensors[name].astype(dtypes[1])
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter = read_adapter(folder, model)
    assert adapter.dtype == want
    a, b = adapter.read_factors([adapter.modules[("q", 0)]])
    assert a.dtype == b.dtype == np.float32


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"use_dora": True}, "'use_dora' is set: DoRA"),
        ({"bias": "all"}, "field 'bias' is 'all': only 'none'"),
        ({"bias": "lora_only"}, "field 'bias' is 'lora_only'"),
        ({"fan_in_fan_out": True}, "'fan_in_fan_out' is set"),
        ({"modules_to_save": ["lm_head"]}, "'modules_to_save' is set"),
        ({"some_future_field": 3}, "'some_future_field' is not understood by crosslora_jax and is set to 3"),
        ({"peft_type": "IA3"}, "peft_type is 'IA3'; only LORA"),
        ({"peft_type": None}, "peft_type is None; only LORA"),
        ({"r": 0}, "field 'r' must be a positive number"),
        ({"r": 8.0}, "field 'r' must be an integer"),
        ({"lora_alpha": -1}, "field 'lora_alpha' must be a positive number"),
        ({"rank_pattern": {"(": 2}}, "rank_pattern pattern '\\(' is not a valid regex"),
        ({"alpha_pattern": {"q_proj": 0}}, r"alpha_pattern\['q_proj'\] must be positive"),
        ({"rank_pattern": ["q_proj"]}, "'rank_pattern' must be an object"),
        ({"target_modules": 3}, "'target_modules' must be a string or a list"),
        ({"target_modules": "["}, "target_modules pattern"),
        ({"layers_to_transform": "0"}, "'layers_to_transform' must be an integer or a list"),
    ],
)
def test_config_refusals(tmp_path, config, message):
    model = _model(tmp_path)
    with pytest.raises(AdapterError, match=message) as e:
        read_adapter(_write(tmp_path / "a", model, _grid(), **config), model)
    assert e.value.where.endswith("adapter_config.json")


@pytest.mark.parametrize("field", sorted(peft_adapter._REFUSED_FIELDS))
def test_every_refused_field_is_refused_by_name_only_when_set(tmp_path, field):
    model = _model(tmp_path)
    folder = _write(tmp_path / "a", model, _grid())
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, field: None}))
    read_adapter(folder, model)  # present but unset, as PEFT writes it
    (folder / "adapter_config.json").write_text(json.dumps({**config, field: {"x": 1}}))
    with pytest.raises(AdapterError, match=f"field '{field}' is set"):
        read_adapter(folder, model)


def test_pickle_adapter_refused(tmp_path):
    model = _model(tmp_path)
    folder = _write(tmp_path / "a", model, _grid())
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickle file, which crosslora_jax never loads") as e:
        read_adapter(folder, model)
    assert e.value.where.endswith("adapter_model.bin")
    (folder / "adapter_model.bin").unlink()
    with pytest.raises(AdapterError, match=re.escape("adapter_model.safetensors: file not found")):
        read_adapter(folder, model)


def test_peft_written_config_is_accepted(tmp_path):
    """The full field list PEFT 0.21 writes (unset fields as null/false/{}) is read, not refused."""
    model = _model(tmp_path)
    peft_fields = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
        "auto_mapping": {"base_model_class": "LlamaForCausalLM", "parent_library": "transformers.models.llama"},
        "base_model_name_or_path": None, "bias": "none", "corda_config": None, "ensure_weight_tying": False,
        "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "kasa_config": None, "layer_replication": None, "layers_pattern": None,
        "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 16, "lora_bias": False, "lora_dropout": 0.0,
        "lora_ga_config": None, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
        "monteclora_config": None, "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 8,
        "rank_pattern": {}, "revision": None, "target_modules": ["q_proj", "v_proj"], "target_parameters": None,
        "task_type": None, "trainable_token_indices": None, "use_bdlora": None, "use_dora": False,
        "use_qalora": False, "use_rslora": False, "velora_config": None,
    }  # fmt: skip
    folder = _write(tmp_path / "a", model, _grid())
    (folder / "adapter_config.json").write_text(json.dumps(peft_fields))
    assert len(read_adapter(folder, model).modules) == 2 * LAYERS


def test_weight_file_problems(tmp_path):
    model = _model(tmp_path)
    other = _model(tmp_path, name="other", hidden=48)

    def refused(folder: Path, message: str) -> None:
        with pytest.raises(AdapterError, match=message):
            read_adapter(folder, model)

    refused(_write(tmp_path / "wrong_model", other, _grid()), "do not fit the source model's")
    refused(_write(tmp_path / "deep", _model(tmp_path, name="deep", layers=5), _grid(layers=[4])), "beyond the source")
    folder = _write(tmp_path / "no_b", model, _grid())
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.ones((8, 32), np.float32)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    refused(folder, "has no lora_B factor")
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": np.ones(32, np.float32)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    refused(folder, "is not a LoRA factor crosslora_jax can transfer")
    tensors = {f"base_model.model.lm_head.lora_{x}.weight": np.ones((8, 8), np.float32) for x in "AB"}
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    refused(folder, "'lm_head' is not a q/k/v/o/gate/up/down projection of a llama model")
    save_file({}, str(folder / "adapter_model.safetensors"))
    refused(folder, "no LoRA factors found")


def _written(model, modules):
    return [LoraModule(model.arch.module_path(role, layer), role, layer, k, a) for role, layer, k, a in modules]


def test_adapter_config_for_target_full_grid(tmp_path):
    target = _model(tmp_path, arch="gemma2", name="target")
    source_config = {
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ".*q_proj",
        "exclude_modules": ["x"], "layers_pattern": "layers", "layers_to_transform": [0], "revision": "main",
        "base_model_name_or_path": "source/model", "rank_pattern": {"q_proj": 8}, "lora_dropout": 0.1,
        "auto_mapping": {"base_model_class": "LlamaForCausalLM", "parent_library": "transformers.models.llama"},
    }  # fmt: skip
    modules = [(role, layer, 8, 16.0) for layer in range(LAYERS) for role in ("q", "down")]
    config = adapter_config_for_target(source_config, target, _written(target, modules))
    assert config == {
        "peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": True, "lora_dropout": 0.1,
        "target_modules": ["down_proj", "q_proj"], "base_model_name_or_path": str(target.folder.resolve()),
        "rank_pattern": {}, "alpha_pattern": {},
        "auto_mapping": {"base_model_class": "Gemma2ForCausalLM",
                         "parent_library": "transformers.models.gemma2.modeling_gemma2"},
    }  # fmt: skip


def test_adapter_config_for_target_layers_and_patterns(tmp_path):
    target = _model(tmp_path, name="target")
    source_config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    grid = [("q", 0, 8, 16.0), ("v", 0, 8, 16.0), ("q", 2, 4, 16.0), ("v", 2, 8, 3.0)]
    config = adapter_config_for_target(source_config, target, _written(target, grid))
    assert config["target_modules"] == ["q_proj", "v_proj"]
    assert config["layers_to_transform"] == [0, 2]
    assert config["layers_pattern"] == "layers"
    assert config["rank_pattern"] == {"model.layers.2.self_attn.q_proj": 4}
    assert config["alpha_pattern"] == {"model.layers.2.self_attn.v_proj": 3.0}
    assert "auto_mapping" not in config
    ragged = [("q", 0, 8, 16.0), ("v", 1, 8, 16.0)]
    config = adapter_config_for_target(source_config, target, _written(target, ragged))
    assert config["target_modules"] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    assert "layers_to_transform" not in config


@pytest.mark.parametrize(
    "modules",
    [
        [(role, layer, 8, 16.0) for layer in range(LAYERS) for role in ("q", "k", "v", "o", "gate", "up", "down")],
        [("q", 1, 8, 16.0), ("v", 1, 2, 16.0), ("q", 2, 8, 5.0), ("v", 2, 8, 16.0)],
        [("down", 0, 3, 1.5), ("q", 11, 8, 16.0), ("q", 1, 6, 16.0)],
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_written_adapter_reads_back_as_written(tmp_path, modules, dtype):
    """write_adapter + adapter_config_for_target describe exactly the modules, ranks and alphas written."""
    target = _model(tmp_path, arch="qwen2", name="target", layers=12)
    rng = np.random.default_rng(0)
    written = _written(target, modules)
    factors = {}
    for m in written:
        rows, cols = target.shapes[m.role]
        factors[m.path] = (rng.standard_normal((m.rank, cols)), rng.standard_normal((rows, m.rank)))
    source_config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_rslora": True, "target_modules": ["x"]}
    folder = tmp_path / "out"
    folder.mkdir()
    write_adapter(folder, factors, adapter_config_for_target(source_config, target, written), dtype)
    adapter = read_adapter(folder, target)
    assert adapter.dtype == dtype
    assert adapter.use_rslora
    assert {key: (m.path, m.rank, m.alpha) for key, m in adapter.modules.items()} == {
        (m.role, m.layer): (m.path, m.rank, m.alpha) for m in written
    }
    for m in written:
        a, b = adapter.read_factors([adapter.modules[(m.role, m.layer)]])
        want_a, want_b = (x.astype(NUMPY_DTYPES[dtype]).astype(np.float32) for x in factors[m.path])
        np.testing.assert_array_equal(a[0], want_a)
        np.testing.assert_array_equal(b[0], want_b)


def _phi3_rows(model) -> dict[str, tuple[int, int]]:
    """Rows of each role in phi3's qkv_proj / gate_up_proj, from the config's own fields."""
    raw = model.raw
    q, kv, inter = (
        raw["num_attention_heads"] * raw["head_dim"],
        raw["num_key_value_heads"] * raw["head_dim"],
        raw["intermediate_size"],
    )
    return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv), "gate": (0, inter), "up": (inter, 2 * inter)}


def test_fused_adapter_is_split_by_rows(tmp_path):
    """A PEFT adapter of phi3's fused qkv_proj / gate_up_proj: one module per role, lora_A shared,
    lora_B the role's rows; rank and alpha from the fused module's patterns."""
    model = _model(tmp_path, arch="phi3", head_dim=16)  # q 4·16 = 64 rows, k and v 2·16 each; gate, up 48
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(LAYERS):
        # (module, out, in, rank): o_proj reads the 64 attention features, the fused modules the 32 hidden
        for module, out, inp, k in (("self_attn.qkv_proj", 128, 32, 4), ("mlp.gate_up_proj", 96, 32, 6),
                                    ("self_attn.o_proj", 32, 64, 4)):  # fmt: skip
            key = f"{KEY_PREFIX}model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((k, inp)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((out, k)).astype(np.float32)
    folder = tmp_path / "a"
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["qkv_proj", "gate_up_proj", "o_proj"],
              "rank_pattern": {"gate_up_proj": 6}, "alpha_pattern": {"gate_up_proj": 3}}  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(config))
    adapter = read_adapter(folder, model)
    assert adapter.roles() == sorted(["q", "k", "v", "o", "gate", "up"])
    rows = _phi3_rows(model)
    assert set(adapter.modules) == {
        (role, layer) for role in ("q", "k", "v", "o", "gate", "up") for layer in range(LAYERS)
    }
    for (role, _), module in adapter.modules.items():
        key = f"{KEY_PREFIX}{module.path}"
        assert module.path.endswith(
            {"q": "qkv_proj", "k": "qkv_proj", "v": "qkv_proj", "o": "o_proj"}.get(role, "gate_up_proj")
        )
        assert (module.rank, module.alpha) == ((6, 3.0) if role in ("gate", "up") else (4, 8.0))
        a, b = adapter.read_factors([module])
        np.testing.assert_array_equal(a[0], tensors[f"{key}.lora_A.weight"])
        start, stop = rows.get(role, (0, 32))
        np.testing.assert_array_equal(b[0], tensors[f"{key}.lora_B.weight"][start:stop])
    tensors[f"{KEY_PREFIX}model.layers.1.self_attn.qkv_proj.lora_B.weight"] = np.ones((64, 4), np.float32)  # q only
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=re.escape("lora_B [64, 4], which do not fit the source model's [128, 32]")):
        read_adapter(folder, model)


@pytest.mark.parametrize("rslora", [False, True])
def test_fused_target_modules_are_written_fused_and_read_back_per_role(tmp_path, rslora):
    """Per-role target factors onto phi3: one LoRA per fused module and layer whose merged delta
    (γ from the written config, PEFT's rule) is each role's γ_role·B·A at its rows, zero for roles
    not written, whatever the roles' own ranks and alphas."""
    target = _model(tmp_path, arch="phi3", name="target", head_dim=16)
    rows = _phi3_rows(target)
    # layer 0: q, k, v alike; layer 1: v's rank and k's alpha differ, no q; layer 2: gate only; o, down unfused
    modules = [("q", 0, 4, 8.0), ("k", 0, 4, 8.0), ("v", 0, 4, 8.0), ("k", 1, 4, 3.0), ("v", 1, 2, 8.0),
               ("gate", 2, 6, 8.0), ("up", 0, 4, 8.0), ("gate", 0, 4, 8.0), ("o", 1, 4, 8.0), ("down", 2, 3, 5.0)]  # fmt: skip
    rng = np.random.default_rng(1)
    factors = {}
    for m in _written(target, modules):
        out, inp = target.shapes[m.role]
        factors[m] = (rng.standard_normal((m.rank, inp)), rng.standard_normal((out, m.rank)))
    source_config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": rslora, "target_modules": ["x"]}
    folder = tmp_path / "out"
    folder.mkdir()
    peft_adapter.write_target_adapter(folder, source_config, target, factors, "float32")

    def gamma(alpha, rank):
        return alpha / (math.sqrt(rank) if rslora else rank)

    want: dict[str, np.ndarray] = {}  # module path -> float64 ΔW of the whole stored module
    for m, (a, b) in factors.items():
        m_total = target.stored_shape(m.role)[0]
        delta = want.setdefault(m.path, np.zeros((m_total, a.shape[1])))
        start, stop = rows.get(m.role, (0, m_total))
        delta[start:stop] += gamma(m.alpha, m.rank) * (b @ a)
    written = load_file_f64(folder / "adapter_model.safetensors")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert {k.removeprefix(KEY_PREFIX).rsplit(".", 2)[0] for k in written} == set(want)
    for path, delta in want.items():
        a, b = written[f"{KEY_PREFIX}{path}.lora_A.weight"], written[f"{KEY_PREFIX}{path}.lora_B.weight"]
        rank = peft_adapter.pattern_value(config["rank_pattern"], path, config["r"])
        alpha = peft_adapter.pattern_value(config["alpha_pattern"], path, config["lora_alpha"])
        assert a.shape[0] == rank
        np.testing.assert_allclose(gamma(alpha, rank) * (b @ a), delta, rtol=1e-5, atol=1e-6 * np.abs(delta).max())
    assert config["rank_pattern"]["model.layers.0.self_attn.qkv_proj"] == 12  # 3 roles of rank 4
    assert config["rank_pattern"]["model.layers.1.self_attn.qkv_proj"] == 6
    # read back per role: each role's ΔW at its own rows
    adapter = read_adapter(folder, target)
    for m, (a, b) in factors.items():
        got = adapter.modules[(m.role, m.layer)]
        a_r, b_r = adapter.read_factors([got])
        np.testing.assert_allclose(adapter.scale(got) * (b_r[0].astype(np.float64) @ a_r[0]),
                                   gamma(m.alpha, m.rank) * (b @ a), rtol=1e-5, atol=1e-6 * np.abs(b @ a).max())  # fmt: skip
    k0 = adapter.modules[("q", 1)]  # not written, yet its module is: zero rows
    assert not adapter.read_factors([k0])[1].any()


def load_file_f64(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
