"""crosslora_jax.io.safetensors_checkpoint: single file and sharded index, dtypes, lazy reads, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from crosslora_jax import CheckpointError, synthetic
from crosslora_jax.io.dtypes import FLOAT_DTYPES
from crosslora_jax.io.safetensors_checkpoint import Checkpoint, SafetensorsFile

REPO = Path(__file__).resolve().parents[2]


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"w{i}": rng.standard_normal((3 + i, 5)).astype(np.float32) for i in range(4)}


def _write_single(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _write_sharded(folder: Path, tensors: dict[str, np.ndarray], shards: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        file_name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(folder / file_name))
        weight_map.update(dict.fromkeys(part, file_name))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.mark.parametrize(
    ("dtype", "tag"), [(np.float32, "F32"), (np.float16, "F16"), (ml_dtypes.bfloat16, "BF16"), (np.float64, "F64")]
)
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_reads_every_float_dtype_as_float32(tmp_path, dtype, tag, layout):
    stored = {k: v.astype(dtype) for k, v in _tensors().items()}
    write = _write_single if layout == "single" else _write_sharded
    ckpt = Checkpoint(write(tmp_path / "m", stored))
    for name, value in stored.items():
        assert SafetensorsFile(ckpt.file_of(name)).dtype(name) == tag
        assert ckpt.shape(name) == value.shape
        got = ckpt.read_f32(name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, value.astype(np.float32))


@pytest.mark.parametrize("row", FLOAT_DTYPES, ids=lambda d: d.name)
def test_each_dtype_row_is_what_safetensors_and_numpy_call_it(tmp_path, row):
    save_file({"x": np.arange(6).reshape(2, 3).astype(row.numpy)}, str(tmp_path / "x.safetensors"))
    stored = SafetensorsFile(tmp_path / "x.safetensors")
    assert stored.dtype("x") == row.tag and np.dtype(row.numpy).name == row.name
    assert stored.read("x").dtype == np.dtype(row.numpy) and stored.read_f32("x").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_sharded_index_routes_each_tensor_to_its_shard(tmp_path):
    tensors = _tensors()
    folder = _write_sharded(tmp_path / "m", tensors, shards=2)
    ckpt = Checkpoint(folder)
    assert ckpt.file_of("w0").name == "model-00001-of-00002.safetensors"
    assert ckpt.file_of("w1").name == "model-00002-of-00002.safetensors"
    assert [p.name for p in ckpt.fingerprint_files()] == [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    stack = ckpt.read_stack(["w0", "w0"])
    assert stack.shape == (2, 3, 5)
    np.testing.assert_array_equal(stack[1], tensors["w0"])


def test_index_wins_over_single_file_and_synthetic_shards_read_back(tmp_path):
    config = synthetic.model_config("llama", hidden=16, intermediate=24, heads=2, kv_heads=1, layers=2)
    tensors = synthetic.model_tensors(config, seed=0)
    folder = synthetic.write_model(tmp_path / "m", config, tensors, dtype="bfloat16", shards=3)
    ckpt = Checkpoint(folder)
    assert len({ckpt.file_of(n) for n in tensors}) == 3
    for name, value in tensors.items():
        np.testing.assert_array_equal(ckpt.read_f32(name), value.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_only_requested_tensors_are_read(tmp_path, monkeypatch):
    read: list[str] = []
    real_read = SafetensorsFile.read

    def recording(self, name, *args, **kwargs):
        read.append(name)
        return real_read(self, name, *args, **kwargs)

    monkeypatch.setattr(SafetensorsFile, "read", recording)
    ckpt = Checkpoint(_write_single(tmp_path / "m", _tensors()))
    assert ckpt.shape("w3") == (6, 5)
    assert read == []  # shapes come from the header
    ckpt.read_f32("w2")
    assert read == ["w2"]


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_row_ranges_read_one_block_of_a_fused_tensor(tmp_path, dtype, layout):
    """A role of a fused projection: rows [start, stop) equal the slice, and only they are read
    (rows outside hold NaN, which a whole-tensor read refuses)."""
    tensors = {k: v.astype(dtype) for k, v in _tensors().items()}  # w3: 6 x 5
    tensors["w3"][[0, 1, 5]] = np.nan
    write = _write_single if layout == "single" else _write_sharded
    ckpt = Checkpoint(write(tmp_path / "m", tensors))
    np.testing.assert_array_equal(ckpt.read_f32("w3", (2, 5)), tensors["w3"][2:5].astype(np.float32))
    np.testing.assert_array_equal(ckpt.read_f32("w2", (0, 5)), tensors["w2"].astype(np.float32))
    with pytest.raises(CheckpointError, match="NaN"):
        ckpt.read_f32("w3")
    with pytest.raises(CheckpointError, match="NaN"):
        ckpt.read_f32("w3", (4, 6))
    stack = ckpt.read_stack_stored(["w3", "w3"], (2, 4))
    assert stack.dtype == dtype and stack.shape == (2, 2, 5)
    np.testing.assert_array_equal(stack[1], tensors["w3"][2:4])
    np.testing.assert_array_equal(ckpt.read_stack(["w1", "w2"], (1, 3)),
                                  np.stack([tensors[n][1:3] for n in ("w1", "w2")]).astype(np.float32))  # fmt: skip
    for bad in [(0, 7), (3, 3), (-1, 2)]:
        with pytest.raises(CheckpointError, match=re.escape(f"no rows {bad[0]}:{bad[1]}")):
            ckpt.read_f32("w3", bad)


def test_reads_leave_no_file_pages_resident(tmp_path):
    """No mmap: after reading a 256 MB file tensor by tensor, RssFile has not grown by it."""
    code = (
        "import numpy as np\n"
        "from safetensors.numpy import save_file\n"
        "from crosslora_jax.io.safetensors_checkpoint import SafetensorsFile\n"
        f"path = {str(tmp_path / 'big.safetensors')!r}\n"
        "save_file({f'w{i}': np.full((1024, 4096), i, np.float32) for i in range(16)}, path)\n"
        "def rss_file():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('RssFile')).split()[1])\n"
        "before = rss_file()\n"
        "f = SafetensorsFile(__import__('pathlib').Path(path))\n"
        "for i in range(16):\n"
        "    assert f.read_f32(f'w{i}')[0, 0] == i\n"
        "print(rss_file() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) < 32 * 1024, out.stdout  # kB; the file is 256 MB


def test_file_truncated_after_open_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": np.ones((64, 64), np.float32), "b": np.ones((64, 64), np.float32)}, str(path))
    f = SafetensorsFile(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    np.testing.assert_array_equal(f.read_f32("a"), 1.0)
    with pytest.raises(CheckpointError, match="file ends early"):
        f.read_f32("b")


def test_sharded_reads_never_open_unneeded_shards(tmp_path):
    folder = _write_sharded(tmp_path / "m", _tensors(), shards=2)
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"garbage")
    ckpt = Checkpoint(folder)
    np.testing.assert_array_equal(ckpt.read_f32("w0"), _tensors()["w0"])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        ckpt.read_f32("w1")


def test_reading_does_not_import_torch(tmp_path):
    folder = _write_single(tmp_path / "m", {"w": np.ones((2, 2), ml_dtypes.bfloat16)})
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from crosslora_jax.io.safetensors_checkpoint import Checkpoint\n"
        f"x = Checkpoint({str(folder)!r}).read_f32('w')\n"
        "assert x.dtype.name == 'float32' and x.sum() == 4, x\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_missing_tensor_single_file(tmp_path):
    ckpt = Checkpoint(_write_single(tmp_path / "m", _tensors()))
    with pytest.raises(CheckpointError, match="'nope' not found"):
        ckpt.read_f32("nope")
    with pytest.raises(CheckpointError, match="'nope' not found"):
        ckpt.shape("nope")


def test_missing_tensor_sharded(tmp_path):
    folder = _write_sharded(tmp_path / "m", _tensors())
    ckpt = Checkpoint(folder)
    with pytest.raises(CheckpointError, match="'nope' is not listed") as e:
        ckpt.read_f32("nope")
    assert e.value.where.endswith("model.safetensors.index.json")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'ghost' is listed in the index but missing"):
        Checkpoint(folder).shape("ghost")


def test_missing_shard_file(tmp_path):
    folder = _write_sharded(tmp_path / "m", _tensors())
    (folder / "model-00002-of-00002.safetensors").unlink()
    ckpt = Checkpoint(folder)
    ckpt.read_f32("w0")
    with pytest.raises(CheckpointError, match="file not found"):
        ckpt.read_f32("w1")


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"weight_map": {}}, "non-empty"),
        ({"metadata": {}}, "non-empty"),
        ({"weight_map": {"w": "../other/model.safetensors"}}, "not a file in this folder"),
        ({"weight_map": {"w": "/abs/model.safetensors"}}, "not a file in this folder"),
        ({"weight_map": {"w": 3}}, "not a file in this folder"),
        ([], "expected a JSON object"),
    ],
)
def test_bad_index_refused(tmp_path, index, message):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(folder)


def test_no_weights_and_pickle_hint(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=re.escape("no model.safetensors")):
        Checkpoint(folder)
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=re.escape("pytorch_model.bin is a pickle file")):
        Checkpoint(folder)
    with pytest.raises(CheckpointError, match="folder not found"):
        Checkpoint(tmp_path / "absent")


def test_damaged_file_non_float_and_non_finite(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        SafetensorsFile(bad)
    path = tmp_path / "x.safetensors"
    save_file({"i": np.ones((2, 2), np.int32), "n": np.array([[1.0, np.nan]], np.float32)}, str(path))
    f = SafetensorsFile(path)
    with pytest.raises(CheckpointError, match="dtype I32, expected a float"):
        f.read("i")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        f.read_f32("n")
    assert np.isnan(f.read_f32("n", check_finite=False)).any()
