"""Through the command line: bad input is exit 2 and one `error:` line; signals clean up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bad_inputs import CASES, make_inputs

from crosslora_jax import synthetic

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crosslora_jax.transfer", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def args_for(p: dict[str, Path], *extra: str) -> list[str]:
    return [f"--source_model={p['source']}", f"--target_model={p['target']}", f"--adapter={p['adapter']}",
            f"--output={p['output']}", "--svd_rank=8", *extra]  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# One case per class of problem: paths, JSON, architecture, safetensors, adapter, output.
@pytest.mark.parametrize(
    "case", ["missing_source", "malformed_adapter_config", "unknown_model_type", "oversized_header",
             "inf_in_adapter", "adapter_for_another_model", "output_not_empty"],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(tmp_path, case) -> None:
    spoil, _, text, names = CASES[case]
    paths = make_inputs(tmp_path)
    spoil(paths)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(run_cli(*args_for(paths)), text, names)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [(["--method=bogus"], "--method"), (["--process_id=1"], "need --distributed"),
     (["--min_similarity=2"], "--min_similarity"), (["--svd_rank=0"], "--svd_rank: must be at least 1"),
     (["--flagfile=/no/such/file"], "flagfile")],
)  # fmt: skip
def test_bad_flags_exit_2_with_one_line(tmp_path, extra, fragment) -> None:
    paths = make_inputs(tmp_path)
    assert_one_line_error(run_cli(*args_for(paths, *extra)), fragment)
    assert not paths["output"].exists()


# Every command, each kind of bad value: absl's own (enum, number) and the option type's (range).
# Evaluate's model and task do not exist: the options must be refused before any file is read.
@pytest.mark.parametrize(
    ("module", "extra", "fragment"),
    [("transfer", ["--svd=qr"], "--svd=qr"), ("transfer", ["--layers_per_chunk=many"], "--layers_per_chunk"),
     ("transfer", ["--svd_power_iters=-1"], "--svd_power_iters: must be at least 0"),
     ("transfer", ["--output_dtype=float64"], "--output_dtype"),
     ("demo", ["--method=bogus"], "--method"), ("demo", ["--svd_rank=0"], "--svd_rank: must be at least 1"),
     ("evaluate", ["--task_format=csv"], "--task_format"), ("evaluate", ["--batch_size=0"], "--batch_size"),
     ("evaluate", ["--max_length=1"], "--max_length: must be at least 2"),
     ("distill", ["--kd=reverse"], "--kd"), ("distill", ["--top_p=0"], "--top_p"),
     ("distill", ["--batch_size=64", "--prompts=8"], "--batch_size"),
     ("distill", ["--param_dtype=float16"], "--param_dtype"), ("distill", ["--process_id=1"], "need --distributed")],
)  # fmt: skip
def test_every_command_refuses_a_bad_flag_value_with_exit_2(tmp_path, module, extra, fragment) -> None:
    if module == "transfer":
        required = args_for(make_inputs(tmp_path))
    elif module == "distill":
        p = make_inputs(tmp_path)
        required = [f"--source_model={p['source']}", f"--target_model={p['target']}", f"--adapter={p['adapter']}",
                    f"--output={p['output']}"]  # fmt: skip
    elif module == "demo":
        required = [f"--workdir={tmp_path / 'work'}"]
    else:
        required = [f"--model={tmp_path / 'no_model'}", f"--task={tmp_path / 'no_task.jsonl'}"]
    before = sorted(tmp_path.rglob("*"))
    result = subprocess.run([sys.executable, "-m", f"crosslora_jax.{module}", *required, *extra], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert_one_line_error(result, fragment)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written: not the demo's models, no output


def test_missing_required_flag(tmp_path) -> None:
    assert_one_line_error(run_cli("--source_model=x"), "--target_model")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_stops_promptly_and_leaves_nothing(tmp_path, sig) -> None:
    src = synthetic.model_config("llama", hidden=256, intermediate=512, heads=4, kv_heads=2, layers=6)
    tgt = synthetic.model_config("qwen2", hidden=320, intermediate=640, heads=5, kv_heads=1, layers=6)
    paths = {
        "source": synthetic.write_model(tmp_path / "src", src, synthetic.model_tensors(src, seed=0)),
        "target": synthetic.write_model(tmp_path / "tgt", tgt, synthetic.model_tensors(tgt, seed=1)),
        "adapter": synthetic.write_adapter(tmp_path / "lora", src, seed=2, roles=("q", "down")),
        "output": tmp_path / "out",
    }
    flags = args_for(paths, "--layers_per_chunk=1", "--svd_rank=64", f"--cache_dir={tmp_path / 'cache'}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crosslora_jax.transfer", *flags], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # wait for the first finished chunk
        if "chunk 1/" in line:
            break
    else:
        pytest.fail(f"no progress line; exit {proc.wait()}")
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    rest = proc.stderr.read()
    code = proc.wait(timeout=30)
    assert time.monotonic() - sent < 10, "did not stop promptly"
    assert code == 128 + sig, rest  # the shell's convention: 143 for SIGTERM, 130 for SIGINT
    assert "error: interrupted" in rest
    assert not paths["output"].exists()
    assert not list(tmp_path.glob(".out.partial-*")), list(tmp_path.iterdir())
    if sig == signal.SIGTERM:  # the same command again resumes from the cache ...
        subprocess.run([sys.executable, "-m", "crosslora_jax.transfer", *flags], cwd=ROOT, check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        report = json.loads((paths["output"] / "crosslora_report.json").read_text())
        assert report["subspaces"]["cached_layers"] >= 1, report["subspaces"]
        assert list((tmp_path / "cache" / "xla").iterdir()), "--cache_dir also keeps compiled XLA programs"
        # ... and writes what an uninterrupted run without a cache writes.
        clean = tmp_path / "clean"
        subprocess.run([sys.executable, "-m", "crosslora_jax.transfer", *args_for({**paths, "output": clean},
                        "--layers_per_chunk=1", "--svd_rank=64")], cwd=ROOT, check=True, capture_output=True,
                       timeout=300)  # fmt: skip
        resumed, fresh = load_file(str(paths["output"] / "adapter_model.safetensors")), load_file(
            str(clean / "adapter_model.safetensors"))  # fmt: skip
        assert resumed.keys() == fresh.keys()
        for key in fresh:
            np.testing.assert_array_equal(resumed[key], fresh[key])


@pytest.mark.parametrize("case", ["a_file", "under_a_file", "read_only"])
def test_an_unusable_cache_folder_is_one_line_before_compute(tmp_path, case) -> None:
    paths = make_inputs(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    cache = {"a_file": tmp_path / "afile", "under_a_file": tmp_path / "afile" / "cache", "read_only": tmp_path / "ro"}
    if case == "read_only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        cache[case].mkdir(mode=0o555)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    started = time.monotonic()
    result = run_cli(*args_for(paths, f"--cache_dir={cache[case]}"))
    assert_one_line_error(result, str(cache[case]))
    assert "Checkpoint path" not in result.stderr and time.monotonic() - started < 60
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no output, no orbax tmp
