"""A good (source, target, adapter) triple and the ways to spoil it, shared by the bad-input tests."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from crosslora_jax import (
    AdapterError,
    CheckpointError,
    ConfigError,
    CrossLoraError,
    OptionsError,
    OutputError,
    synthetic,
)

SRC_CFG = synthetic.model_config("llama", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2)
TGT_CFG = synthetic.model_config("gemma2", hidden=48, intermediate=96, heads=4, kv_heads=1, layers=3)
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_W = "model.layers.0.self_attn.q_proj.weight"


def make_inputs(root: Path) -> dict[str, Path]:
    return {
        "source": synthetic.write_model(root / "src", SRC_CFG, synthetic.model_tensors(SRC_CFG, seed=0)),
        "target": synthetic.write_model(root / "tgt", TGT_CFG, synthetic.model_tensors(TGT_CFG, seed=1), shards=2),
        "adapter": synthetic.write_adapter(root / "lora", SRC_CFG, seed=2, roles=("q", "v")),
        "output": root / "out",
    }


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _edit_tensor(path: Path, name: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    tensors = load_file(str(path))
    tensors[name] = fn(tensors[name])
    save_file(tensors, str(path))


def _raw_header(path: Path, header: dict) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data[8 + n :])


def _header_of(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


def _target_shard(p: dict[str, Path]) -> Path:
    index = json.loads((p["target"] / "model.safetensors.index.json").read_text())
    return p["target"] / index["weight_map"]["model.layers.0.self_attn.q_proj.weight"]


def _bad_offsets(p):
    h = _header_of(p["source"] / "model.safetensors")
    h[Q_W]["data_offsets"] = [0, 10**9]
    _raw_header(p["source"] / "model.safetensors", h)


def _unknown_dtype(p):
    h = _header_of(p["source"] / "model.safetensors")
    h[Q_W]["dtype"] = "Q7"
    _raw_header(p["source"] / "model.safetensors", h)


def _missing_from_index(p):
    shard = _target_shard(p)
    tensors = load_file(str(shard))
    del tensors["model.layers.0.self_attn.q_proj.weight"]
    save_file(tensors, str(shard))


def _wrong_source(p):
    other = synthetic.model_config("llama", hidden=40, intermediate=64, heads=4, kv_heads=2, layers=2)
    shutil.rmtree(p["adapter"])
    synthetic.write_adapter(p["adapter"], other, seed=3, roles=("q",))


def _output_inside_input(p):
    p["output"] = p["adapter"] / "sub"


def _output_not_empty(p):
    p["output"].mkdir()
    (p["output"] / "keep.txt").write_text("mine")


def _output_under_a_file(p):
    (p["output"].parent / "afile").write_text("x")
    p["output"] = p["output"].parent / "afile" / "out"


# name -> (spoil the inputs in place, exception type, text the message must contain, file it must name)
CASES: dict[str, tuple[Callable[[dict[str, Path]], None], type[CrossLoraError], str, str]] = {
    "missing_source": (lambda p: shutil.rmtree(p["source"]), ConfigError, "not found", "src"),
    "file_instead_of_folder": (
        lambda p: (shutil.rmtree(p["target"]), p["target"].write_text("x")),
        ConfigError,
        "must be a folder",
        "tgt",
    ),
    "malformed_config": (
        lambda p: (p["source"] / "config.json").write_text("{not json"),
        ConfigError,
        "malformed JSON",
        "config.json",
    ),
    "malformed_adapter_config": (
        lambda p: (p["adapter"] / "adapter_config.json").write_text("[1, 2"),
        AdapterError,
        "malformed JSON",
        "adapter_config.json",
    ),
    "malformed_index": (
        lambda p: (p["target"] / "model.safetensors.index.json").write_text('{"weight_map": 3}'),
        CheckpointError,
        "weight_map",
        "index.json",
    ),
    "unknown_model_type": (
        lambda p: _edit_json(p["target"] / "config.json", model_type="mamba"),
        ConfigError,
        "unknown model_type 'mamba'",
        "config.json",
    ),
    "unsupported_model_type": (
        lambda p: _edit_json(p["target"] / "config.json", model_type="gemma3"),
        ConfigError,
        "'gemma3' is not supported",
        "config.json",
    ),
    "quantized_model": (
        lambda p: _edit_json(p["source"] / "config.json", quantization_config={"bits": 4}),
        ConfigError,
        "quantization_config",
        "config.json",
    ),
    "truncated_safetensors": (
        lambda p: (p["source"] / "model.safetensors").write_bytes(
            (p["source"] / "model.safetensors").read_bytes()[:-100]
        ),
        CheckpointError,
        "not a valid safetensors",
        "model.safetensors",
    ),
    "oversized_header": (
        lambda p: (p["source"] / "model.safetensors").write_bytes(
            struct.pack("<Q", 10**12) + (p["source"] / "model.safetensors").read_bytes()[8:]
        ),
        CheckpointError,
        "header too large",
        "model.safetensors",
    ),
    "offsets_out_of_range": (_bad_offsets, CheckpointError, "not a valid safetensors", "model.safetensors"),
    "unknown_dtype": (_unknown_dtype, CheckpointError, "Q7", "model.safetensors"),
    "tensor_missing_from_index": (_missing_from_index, CheckpointError, "listed in the index but missing", "tgt"),
    "shape_disagrees_with_config": (
        lambda p: _edit_json(p["source"] / "config.json", intermediate_size=80),
        CheckpointError,
        "config.json implies",
        "model.safetensors",
    ),
    "nan_in_base_weight": (
        lambda p: _edit_tensor(p["source"] / "model.safetensors", Q_W, lambda x: np.where(x == x.max(), np.nan, x)),
        CheckpointError,
        "NaN or Inf",
        "model.safetensors",
    ),
    "inf_in_adapter": (
        lambda p: _edit_tensor(
            p["adapter"] / "adapter_model.safetensors", Q_A, lambda x: np.where(x == x.max(), np.inf, x)
        ),
        AdapterError,
        "NaN or Inf",
        "adapter_model.safetensors",
    ),
    "adapter_for_another_model": (_wrong_source, AdapterError, "do not fit", "adapter_model.safetensors"),
    "rank_zero": (
        lambda p: _edit_json(p["adapter"] / "adapter_config.json", r=0),
        AdapterError,
        "'r'",
        "adapter_config.json",
    ),
    "alpha_negative": (
        lambda p: _edit_json(p["adapter"] / "adapter_config.json", lora_alpha=-8),
        AdapterError,
        "'lora_alpha'",
        "adapter_config.json",
    ),
    "dora": (
        lambda p: _edit_json(p["adapter"] / "adapter_config.json", use_dora=True),
        AdapterError,
        "use_dora",
        "adapter_config.json",
    ),
    "pickle_adapter": (
        lambda p: (
            (p["adapter"] / "adapter_model.safetensors").unlink(),
            (p["adapter"] / "adapter_model.bin").write_bytes(b"x"),
        ),
        AdapterError,
        "pickle",
        "adapter_model.bin",
    ),
    "output_inside_input": (_output_inside_input, OptionsError, "overlaps the input", "lora"),
    "output_not_empty": (_output_not_empty, OutputError, "not empty", "out"),
    "output_unwritable": (_output_under_a_file, OutputError, "", "afile"),
}
