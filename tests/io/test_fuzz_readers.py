"""Mangled files into the readers: only CrossLoraError subclasses may come out (hypothesis)."""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
from _profiles import examples
from hypothesis import HealthCheck, given, settings

from crosslora_jax import AdapterError, CheckpointError, ConfigError, read_adapter, read_model_config, synthetic
from crosslora_jax.io.safetensors_checkpoint import Checkpoint, SafetensorsFile

FUZZ = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CFG = synthetic.model_config("llama", hidden=16, intermediate=32, heads=2, kv_heads=1, layers=1)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "U8", "BOOL", "X9", "", "f32"])
tensor_entries = st.fixed_dictionaries(
    {"dtype": dtypes | json_values,
     "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_values,
     "data_offsets": st.lists(st.integers(-5, 2**62), min_size=0, max_size=3) | json_values},
)  # fmt: skip


def _read_all(path: Path) -> None:
    f = SafetensorsFile(path)
    for name in f.names():
        f.read_f32(name)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_safetensors(data) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(data)
        with contextlib.suppress(CheckpointError):
            _read_all(path)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), tensor_entries, max_size=3), body=st.binary(max_size=64),
       claimed=st.none() | st.integers(0, 2**64 - 1))  # fmt: skip
def test_mangled_safetensors_headers(header, body, claimed) -> None:
    raw = json.dumps(header).encode()
    size = len(raw) if claimed is None else claimed
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        path.write_bytes(struct.pack("<Q", size) + raw + body)
        with contextlib.suppress(CheckpointError):
            _read_all(path)


def _valid_model(folder: Path) -> Path:
    return synthetic.write_model(folder, CFG, synthetic.model_tensors(CFG, seed=0))


@FUZZ
@given(edits=st.dictionaries(st.sampled_from([*sorted(CFG), "quantization_config", "num_experts"]), json_values,
                             min_size=1, max_size=4), drop=st.sets(st.sampled_from(sorted(CFG)), max_size=3))  # fmt: skip
def test_mangled_config_json(edits, drop) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        config = {k: v for k, v in {**CFG, **edits}.items() if k not in drop}
        (folder / "config.json").write_text(json.dumps(config))
        with contextlib.suppress(ConfigError):
            read_model_config(folder)


@FUZZ
@given(text=st.text(max_size=40) | json_values.map(json.dumps))
def test_arbitrary_text_as_config_and_index(text) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "config.json").write_text(text)
        (folder / "model.safetensors.index.json").write_text(text)
        with contextlib.suppress(ConfigError):
            read_model_config(folder)
        with contextlib.suppress(CheckpointError):
            Checkpoint(folder).read_f32("model.layers.0.self_attn.q_proj.weight")


@FUZZ
@given(weight_map=st.dictionaries(st.text(max_size=30), json_values | st.sampled_from(
    ["model.safetensors", "../model.safetensors", "/etc/passwd", "x.safetensors", ""]), max_size=4))  # fmt: skip
def test_mangled_index(weight_map) -> None:
    with tempfile.TemporaryDirectory() as d:
        folder = _valid_model(Path(d) / "m")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        try:
            ckpt = Checkpoint(folder)
            for name in weight_map:
                ckpt.read_f32(name)
        except CheckpointError:
            pass


ADAPTER_FIELDS = ["r", "lora_alpha", "use_rslora", "rank_pattern", "alpha_pattern", "target_modules",
                  "layers_to_transform", "peft_type", "bias", "use_dora", "fan_in_fan_out", "modules_to_save",
                  "brand_new_field"]  # fmt: skip


@FUZZ
@given(edits=st.dictionaries(st.sampled_from(ADAPTER_FIELDS), json_values | st.text(max_size=6), min_size=1,
                             max_size=4))  # fmt: skip
def test_mangled_adapter_config(edits) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        model = read_model_config(_valid_model(root / "m"))
        adapter = synthetic.write_adapter(root / "a", CFG, seed=0, roles=("q",), rank=2)
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, **edits}))
        try:
            loaded = read_adapter(adapter, model)
            for module in loaded.modules.values():
                loaded.read_factors([module])
        except AdapterError:
            pass


def _reference_floats(path: Path) -> dict | None:
    """What the reference safetensors library reads from `path` (float tensors), or None if it refuses."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys() if f.get_slice(k).get_dtype() in ("F32", "F16", "BF16")}  # noqa: SIM118
    except Exception:
        return None


@FUZZ
@given(
    field=st.sampled_from(["dtype", "shape", "data_offsets", "none"]),
    value=dtypes | st.lists(st.integers(-1, 40), max_size=3),
    body_delta=st.sampled_from([0, 0, 0, -1, 1, -4]),
    which=st.integers(0, 2),
)
def test_header_checks_agree_with_the_reference_library(field, value, body_delta, which) -> None:
    """Near-valid files (one field or the body length edited): we accept exactly what safetensors accepts."""
    from safetensors.numpy import save_file

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16),
               "c": np.full((2, 2), 3, np.int32)}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.safetensors"
        save_file(tensors, str(path))
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header, body = json.loads(raw[8 : 8 + n]), raw[8 + n :]
        if field != "none":
            header[sorted(tensors)[which]][field] = value
        new = json.dumps(header).encode()
        body = body + b"\0" * body_delta if body_delta > 0 else body[: len(body) + body_delta]
        path.write_bytes(struct.pack("<Q", len(new)) + new + body)
        reference = _reference_floats(path)
        try:
            f = SafetensorsFile(path)
            ours = {k: f.read(k) for k in f.names() if f.dtype(k) in ("F32", "F16", "BF16")}
        except CheckpointError:
            ours = None
        assert (ours is None) == (reference is None), (header, len(body), ours, reference)
        if ours is not None:
            assert ours.keys() == reference.keys()
            for k in ours:
                np.testing.assert_array_equal(ours[k], reference[k])
