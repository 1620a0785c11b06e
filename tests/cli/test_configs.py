"""Every shipped flagfile parses with the transfer command's own flags."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from absl import flags

import crosslora_jax.cli.transfer  # noqa: F401 — defines the flags

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.flags"))
PAIRS = {"qwen2.5-1.5b", "llama-3.2-3b", "gemma-2-2b"}


def test_there_is_one_flagfile_per_paper_pair_and_direction() -> None:
    pairs = {tuple(p.stem.split("_to_")) for p in CONFIGS}
    assert pairs == {(s, t) for s in PAIRS for t in PAIRS if s != t}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_flagfile_parses(path: Path) -> None:
    args = flags.FLAGS.read_flags_from_files([f"--flagfile={path}"], force_gnu=False)
    seen = set()
    for arg in args:
        name, _, value = arg.removeprefix("--").partition("=")
        flag = copy.deepcopy(flags.FLAGS[name])  # KeyError for an unknown flag
        flag.parse(value)  # raises for a bad enum / number
        seen.add(name)
    assert {"source_model", "target_model", "adapter", "output", "method"} <= seen


def test_the_readme_flagfile_runs_twice_from_a_working_directory(tmp_path) -> None:
    """Every path relative (the flagfile, and the models, adapter, output and cache in it), as a
    user following the README runs it; the second run reads every subspace from the cache."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import numpy as np
    from safetensors.numpy import load_file

    from crosslora_jax import synthetic

    root = Path(__file__).resolve().parents[2]
    name = "qwen2.5-1.5b_to_llama-3.2-3b.flags"
    (tmp_path / "configs").mkdir()
    shutil.copy(root / "configs" / name, tmp_path / "configs" / name)
    paths = dict(line.removeprefix("--").strip().split("=", 1) for line in (root / "configs" / name).open()
                 if line.startswith("--"))  # fmt: skip
    assert not any(Path(paths[k]).is_absolute() for k in ("source_model", "target_model", "adapter", "cache_dir"))
    src = synthetic.model_config("qwen2", hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2)
    tgt = synthetic.model_config("llama", hidden=48, intermediate=96, heads=4, kv_heads=1, layers=3)
    synthetic.write_model(tmp_path / paths["source_model"], src, synthetic.model_tensors(src, seed=0))
    synthetic.write_model(tmp_path / paths["target_model"], tgt, synthetic.model_tensors(tgt, seed=1))
    synthetic.write_adapter(tmp_path / paths["adapter"], src, seed=2, roles=("q", "v"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}

    def run(*extra: str) -> str:
        result = subprocess.run([sys.executable, "-m", "crosslora_jax.transfer", f"--flagfile=configs/{name}", *extra],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stderr

    first, second = tmp_path / paths["output"], tmp_path / "adapters" / "second"
    # Hashing a checkpoint for the cache can take minutes on large models: the first run says so
    # on stderr; the second finds the hashes memoised in the cache folder and hashes nothing.
    assert "fingerprinting " in run()
    assert "fingerprinting " not in run("--output=adapters/second")  # a later flag overrides the flagfile's
    reports = [json.loads((out / "crosslora_report.json").read_text()) for out in (first, second)]
    assert reports[0]["subspaces"] == {"computed_layers": 2 * (2 + 3), "cached_layers": 0, "fallback_layers": 0}
    assert reports[1]["subspaces"] == {"computed_layers": 0, "cached_layers": 2 * (2 + 3), "fallback_layers": 0}
    recorded = Path(reports[1]["source_model"])
    assert recorded.is_absolute() and recorded.samefile(tmp_path / paths["source_model"])
    a, b = (load_file(str(out / "adapter_model.safetensors")) for out in (first, second))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
