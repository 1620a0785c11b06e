"""Sharding over devices, the subspace cache, and many adapters in one run (issue 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from _xla_env import xla_flags
from safetensors.numpy import load_file

from crosslora_jax import OutputError, Progress, SvdSettings, TransferOptions, synthetic, transfer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict[str, Path]:
    """A qwen2 source (5 layers) and a llama target (7 layers, GQA), two adapters on the source."""
    root = tmp_path_factory.mktemp("pair")
    src = synthetic.model_config("qwen2", hidden=48, intermediate=96, heads=4, kv_heads=2, layers=5)
    tgt = synthetic.model_config("llama", hidden=64, intermediate=128, heads=4, kv_heads=1, layers=7)
    return {
        "source": synthetic.write_model(root / "src", src, synthetic.model_tensors(src, seed=0)),
        "target": synthetic.write_model(root / "tgt", tgt, synthetic.model_tensors(tgt, seed=1), shards=3),
        "a1": synthetic.write_adapter(root / "adapters" / "a1", src, seed=2, roles=("q", "v", "down")),
        "a2": synthetic.write_adapter(root / "adapters" / "a2", src, seed=3, roles=("q", "k", "o", "up"), rank=4),
    }


OPTIONS = TransferOptions(method="cross_lora", svd=SvdSettings(rank=12), layers_per_chunk=3)


def _factors(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _assert_close(actual: np.ndarray, desired: np.ndarray, rel: float, key: str) -> None:
    """Entries of a factor carry round-off relative to its largest entry, not to themselves."""
    np.testing.assert_allclose(actual, desired, rtol=rel, atol=rel * np.abs(desired).max(), err_msg=key)


def test_eight_devices_give_the_same_adapter_as_one(pair, tmp_path) -> None:
    """7 target layers in chunks of 3 on 8 devices: no chunk divides the device count."""
    one = tmp_path / "one"
    transfer(pair["source"], pair["target"], [pair["a1"]], one, OPTIONS)
    eight = tmp_path / "eight"
    code = (
        "import jax; assert jax.device_count() == 8, jax.devices();"
        "from crosslora_jax import transfer, TransferOptions, SvdSettings;"
        f"transfer({str(pair['source'])!r}, {str(pair['target'])!r}, [{str(pair['a1'])!r}], {str(eight)!r},"
        " TransferOptions(method='cross_lora', svd=SvdSettings(rank=12), layers_per_chunk=3))"
    )
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"), "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=300)
    a, b = _factors(one), _factors(eight)
    assert a.keys() == b.keys() and len(a) == 2 * 3 * 7
    for key in a:
        _assert_close(b[key], a[key], 1e-5, key)
    report = json.loads((eight / "crosslora_report.json").read_text())
    assert len(report["devices"]) == 8


def test_second_adapter_with_a_warm_cache_computes_no_svd(pair, tmp_path) -> None:
    cache = tmp_path / "cache"
    (first,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o1", OPTIONS, cache_dir=cache)
    assert first["subspaces"] == {"computed_layers": 3 * (5 + 7), "cached_layers": 0, "fallback_layers": 0}
    # Same roles, other adapter (rank differs): every subspace comes from the cache.
    other = synthetic.write_adapter(tmp_path / "a3", synthetic.model_config(
        "qwen2", hidden=48, intermediate=96, heads=4, kv_heads=2, layers=5), seed=9, roles=("q", "v", "down"), rank=2)  # fmt: skip
    (second,) = transfer(pair["source"], pair["target"], [other], tmp_path / "o2", OPTIONS, cache_dir=cache)
    assert second["subspaces"] == {"computed_layers": 0, "cached_layers": 3 * (5 + 7), "fallback_layers": 0}
    # The cache keeps each SVD's check and route: cached entries report what the fresh ones did.
    fresh = {m["module"]: (m["svd_source"], m["svd_target"]) for m in first["modules"] if m["status"] == "transferred"}
    for m in second["modules"]:
        if m["module"] in fresh:
            assert (m["svd_source"], m["svd_target"]) == fresh[m["module"]]
    # Cached factors give the same adapter as fresh ones.
    transfer(pair["source"], pair["target"], [other], tmp_path / "o3", OPTIONS)
    a, b = _factors(tmp_path / "o2"), _factors(tmp_path / "o3")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    # Other SVD settings are other entries.
    (third,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o4",
                        TransferOptions(svd=SvdSettings(rank=8), layers_per_chunk=3), cache_dir=cache)  # fmt: skip
    assert third["subspaces"]["cached_layers"] == 0


def test_relative_paths_work_through_the_api(pair, tmp_path, monkeypatch) -> None:
    """orbax refuses relative checkpoint paths; the library resolves every path it is given."""
    monkeypatch.chdir(tmp_path)
    rel = {k: os.path.relpath(v, tmp_path) for k, v in pair.items()}  # "../…" included
    (report,) = transfer(rel["source"], rel["target"], [rel["a1"]], "out", OPTIONS, cache_dir="cache")
    assert report["subspaces"]["computed_layers"] == 36
    assert Path(report["adapter"]).is_absolute() and (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert len([p for p in (tmp_path / "cache").rglob("layer_*") if p.is_dir()]) == 36


def test_a_cache_filled_by_one_engine_is_not_read_by_another(pair, tmp_path) -> None:
    cache = tmp_path / "cache"
    exact = TransferOptions(method="cross_lora", svd=SvdSettings(rank=12, engine="exact"), layers_per_chunk=3)
    (first,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o1", exact, cache_dir=cache)
    assert first["subspaces"] == {"computed_layers": 36, "cached_layers": 0, "fallback_layers": 0}
    (gram,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o2", OPTIONS, cache_dir=cache)
    assert OPTIONS.svd.engine == "gram" and gram["subspaces"] == {
        "computed_layers": 36,
        "cached_layers": 0,
        "fallback_layers": 0,
    }
    # Both engines' entries now live side by side; each run reads its own.
    for options in (exact, OPTIONS):
        (again,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o3", options,
                            overwrite=True, cache_dir=cache)  # fmt: skip
        assert again["subspaces"] == {"computed_layers": 0, "cached_layers": 36, "fallback_layers": 0}


def test_damaged_and_partial_cache_entries_are_recomputed(pair, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o1", OPTIONS, cache_dir=cache)
    entries = sorted(p for p in cache.rglob("layer_*") if p.is_dir())
    assert len(entries) == 36
    # Damage one entry's data files, leave another as if a save had been cut short, and flip one
    # byte of a third's array data (same size: only the checksum record can tell).
    damaged, partial, flipped = entries[0], entries[5], entries[9]
    for f in damaged.rglob("*"):
        if f.is_file() and f.name != "commit_success.txt":
            f.write_bytes(b"\0garbage")
    for f in list(partial.iterdir()):
        if f.is_dir():
            for g in f.rglob("*"):
                if g.is_file():
                    g.unlink()
    data = max((f for f in flipped.rglob("*") if f.is_file() and "d" in f.relative_to(flipped).parts[:-1]),
               key=lambda f: f.stat().st_size)  # fmt: skip
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    # orbax must never open a damaged entry: when one of its concurrent reads fails it closes its
    # event loop under the others, whose completions then raise "Event loop is closed" later.
    opened: list[Path] = []
    real_restore = ocp.PyTreeCheckpointer.restore

    def spy(self, path, *args, **kwargs):
        opened.append(Path(path))
        return real_restore(self, path, *args, **kwargs)

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", spy)
    (report,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o2", OPTIONS, cache_dir=cache)
    assert report["subspaces"] == {"computed_layers": 3, "cached_layers": 33, "fallback_layers": 0}
    assert len(opened) == 33 and not {damaged, partial, flipped} & set(opened)
    a, b = _factors(tmp_path / "o1"), _factors(tmp_path / "o2")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_failed_cache_write_names_the_cache_folder(pair, tmp_path, monkeypatch) -> None:
    def full_disk(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "save", full_disk)
    with pytest.raises(OutputError, match="No space left") as failure:
        transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "out", OPTIONS, cache_dir=tmp_path / "c")
    assert str(tmp_path / "c") in str(failure.value)  # names the cache folder, not the output
    assert not (tmp_path / "out").exists()


class _CtrlCAtThirdChunk(Progress):
    """Ctrl-C as the third layer chunk starts (the CLI turns signals into KeyboardInterrupt)."""

    chunks = 0

    def working(self, label: str) -> None:
        self.chunks += 1
        if self.chunks == 3:
            raise KeyboardInterrupt
        super().working(label)


def test_an_interrupted_run_resumes_from_the_cache(pair, tmp_path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "out", OPTIONS, cache_dir=cache,
                 progress=_CtrlCAtThirdChunk())  # fmt: skip
    assert not (tmp_path / "out").exists()
    (report,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "out", OPTIONS, cache_dir=cache)
    done_before = report["subspaces"]["cached_layers"]
    assert 0 < done_before < 36 and report["subspaces"]["computed_layers"] == 36 - done_before
    transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "clean", OPTIONS)
    a, b = _factors(tmp_path / "out"), _factors(tmp_path / "clean")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_many_adapters_share_one_set_of_subspaces(pair, tmp_path) -> None:
    out = tmp_path / "many"
    reports = transfer(pair["source"], pair["target"], [pair["a1"].parent], out, OPTIONS)  # a folder of adapters
    assert sorted(p.name for p in out.iterdir()) == ["a1", "a2"]
    roles = {"q", "v", "down"} | {"q", "k", "o", "up"}
    for report in reports:
        assert report["subspaces"]["computed_layers"] == len(roles) * (5 + 7)
    # Each equals its own single-adapter run.
    transfer(pair["source"], pair["target"], [pair["a2"]], tmp_path / "solo", OPTIONS)
    a, b = _factors(out / "a2"), _factors(tmp_path / "solo")
    assert a.keys() == b.keys()
    for key in a:
        _assert_close(a[key], b[key], 1e-6, key)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_same_adapter_as_one(pair, tmp_path) -> None:
    """`--distributed` with 2 local CPU processes: one writes, the result equals a single process."""
    single = tmp_path / "single"
    transfer(pair["source"], pair["target"], [pair["a1"]], single, OPTIONS)
    out, port = tmp_path / "multi", _free_port()
    common = [sys.executable, "-m", "crosslora_jax.transfer", f"--source_model={pair['source']}",
              f"--target_model={pair['target']}", f"--adapter={pair['a1']}", f"--output={out}",
              "--svd_rank=12", "--layers_per_chunk=3", f"--cache_dir={tmp_path / 'cache'}",
              "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # one CPU device per process (conftest's XLA_FLAGS kept)
    # Logs go to files: a full stderr pipe would block one process inside a collective.
    logs = [(tmp_path / f"p{i}.log").open("w") for i in range(2)]
    procs = [
        subprocess.Popen([*common, f"--process_id={i}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        for i, log in enumerate(logs)
    ]
    try:
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], [(tmp_path / f"p{i}.log").read_text()[-2000:] for i in range(2)]
    report = json.loads((out / "crosslora_report.json").read_text())
    assert len(report["devices"]) == 2
    a, b = _factors(single), _factors(out)
    assert a.keys() == b.keys()
    for key in a:
        _assert_close(b[key], a[key], 1e-5, key)
    assert not list(tmp_path.glob(".multi.partial-*"))


def test_a_source_layer_shared_by_two_chunks_is_decomposed_once(pair, tmp_path) -> None:
    """Linear map 5→7 layers is [0, 1, 1, 2, 3, 3, 4]; chunks of 2 split the two 1s and the 3s."""
    options = TransferOptions(svd=SvdSettings(rank=12), layers_per_chunk=2)
    (report,) = transfer(pair["source"], pair["target"], [pair["a1"]], tmp_path / "o", options)
    assert report["layer_map"]["target_to_source"] == [0, 1, 1, 2, 3, 3, 4]
    assert report["subspaces"]["computed_layers"] == 3 * (5 + 7)
