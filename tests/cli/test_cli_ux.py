"""What a user sees from each command: --help, progress on stderr, the summary on stdout, the
default XLA compilation cache, and a demo that cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _bad_inputs import make_inputs

ROOT = Path(__file__).resolve().parents[2]


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"crosslora_jax.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})  # fmt: skip


@pytest.mark.parametrize(
    ("module", "own_flags"),
    [("transfer", ["--source_model", "--svd_rank", "--min_similarity", "--cache_dir", "--compilation_cache",
                   "--distributed", "--process_id"]),
     ("demo", ["--workdir", "--method"]),
     ("evaluate", ["--model", "--task", "--batch_size"]),
     ("distill", ["--source_model", "--init", "--learn", "--kd", "--steps", "--svd_rank", "--anchor_weight",
                  "--param_dtype", "--remat", "--distributed", "--coordinator_address"])],
)  # fmt: skip
def test_help_lists_the_commands_own_flags_and_exits_0(module, own_flags) -> None:
    for spelling in ("--help", "-h"):
        result = run_module(module, spelling)
        assert result.returncode == 0, result.stderr
        assert f"python -m crosslora_jax.{module}" in result.stdout  # the usage line
        for flag in own_flags:
            assert f"\n  {flag}:" in result.stdout or f"\n  --[no]{flag[2:]}:" in result.stdout, flag
        assert "--jax_" not in result.stdout and "--helpfull" in result.stdout
        assert "DESIGN" not in result.stdout and "shared/" not in result.stdout


def test_transfer_shows_progress_on_stderr_and_the_summary_on_stdout(tmp_path) -> None:
    paths = make_inputs(tmp_path)
    xdg = tmp_path / "xdg"
    args = [f"--source_model={paths['source']}", f"--target_model={paths['target']}", f"--adapter={paths['adapter']}",
            "--svd_rank=8", "--layers_per_chunk=2"]  # fmt: skip
    result = run_module("transfer", *args, f"--output={paths['output']}", "--plot", env={"XDG_CACHE_HOME": str(xdg)})
    assert result.returncode == 0, result.stderr
    # q and v over 3 target layers in chunks of 2: four steps, one line each (stderr is no terminal).
    steps = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert [s.split()[0] for s in steps] == ["[1/4", "[2/4", "[3/4", "[4/4"], result.stderr
    assert steps[-1].startswith("[4/4 100%]")
    assert all("ETA" in s and "role " in s for s in steps)
    out = result.stdout.splitlines()
    assert out[0] == f"{paths['adapter']} -> {paths['output']}"
    assert "modules transferred" in out[1]
    assert [line.split()[0] for line in out[3:5]] == ["q", "v"]
    assert "(" in out[3] and "Traceback" not in result.stderr
    plot = paths["output"] / "crosslora_report.png"  # --plot: the picture beside the report
    assert re.match(r"  SVD check: 0 of \d+ computed weight SVDs fell back to the exact SVD", out[5]), out[5]
    # the verdict: two independently drawn models sit at chance, so distil, with the paths as typed
    assert out[6].startswith("  verdict: the moved update is not expected to help: φ "), out[6]
    assert out[6].endswith(f"; distil instead: python -m crosslora_jax.distill --source_model={paths['source']} "
                           f"--target_model={paths['target']} --adapter={paths['adapter']} "
                           f"--output={paths['output']}_distilled"), out[6]  # fmt: skip
    assert out[7] == f"  plot: {plot}"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    # Compiled programs were kept in the user's cache folder, so the next run skips compiling.
    assert list((xdg / "crosslora_jax" / "xla").iterdir())
    again = run_module("transfer", *args, f"--output={tmp_path / 'again'}", "--nocompilation_cache",
                       env={"XDG_CACHE_HOME": str(tmp_path / "xdg2")})  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "xdg2").exists()


def test_demo_removes_its_temporary_folder(tmp_path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    result = run_module("demo", env={"TMPDIR": str(tmp)})
    assert result.returncode == 0, result.stderr
    assert "modules transferred" in result.stdout and "temporary folder removed" in result.stdout
    assert list(tmp.iterdir()) == []
    kept = run_module("demo", f"--workdir={tmp_path / 'work'}")
    assert kept.returncode == 0, kept.stderr
    assert (tmp_path / "work" / "target_adapter" / "adapter_model.safetensors").is_file()
